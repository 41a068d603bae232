# The bot. It starts sandboxes on the host's Docker engine through the mounted socket
# (see docker-compose.yml); the sandboxes themselves never get the socket.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# The bot's own static shell, mounted read-only into every sandbox for the terminal's wrapper and kill.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends busybox-static \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY core ./core
COPY bot ./bot
COPY run.py ./
# Without a usable DISCORD_TOKEN the bot says so in one line and waits (restarting would only repeat it).
CMD ["python", "-m", "bot.discord_bot", "--wait-for-token"]
