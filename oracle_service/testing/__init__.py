"""oracle_service/testing"""
