"""bcoder_core.benchmark"""
