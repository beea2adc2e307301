"""bcoder_core.data"""
