"""compo/service_oracle"""
