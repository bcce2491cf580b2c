"""compo/pipeline"""
