"""MCP servers the operator chooses (MCP_CONFIG): their sessions, tools and calls."""
