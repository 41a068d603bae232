"""The Discord face of the engine: discord.py cogs that translate Discord into core calls."""
