"""compo/model"""
