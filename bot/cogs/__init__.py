"""Extensions loaded by the bot's setup_hook: chat, uploads, admin."""
