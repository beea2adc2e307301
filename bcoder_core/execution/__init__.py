"""bcoder_core.execution"""
