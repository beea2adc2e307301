"""bcoder_core.train"""
