"""oracle_service/core"""
