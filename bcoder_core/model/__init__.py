"""bcoder_core.model"""
