"""bcoder_core.rl"""
