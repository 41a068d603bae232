"""Extensions loaded by the bot's setup_hook: chat (messages), everyone (/reset, /sessions, /help, /files), admin (/admin …)."""
