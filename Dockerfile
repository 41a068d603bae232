# The bot. It starts sandboxes on the host's Docker engine through the mounted socket
# (see docker-compose.yml); the sandboxes themselves never get the socket.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY core ./core
COPY bot ./bot
COPY run.py ./
CMD ["python", "-m", "bot.discord_bot"]
