"""core/render.py: the one renderer of a turn's events, as the bot shows them and run.py prints them."""
from __future__ import annotations

from core.events import (Done, FileReady, Ignored, ModelQueued, Notice, Replaced, Replacing, Stopped, TextDelta,
                         ThinkingDelta, ToolFinished, ToolQueued, ToolStarted)
from core.render import NO_ANSWER, THINKING, Reply


def rendered(*events, show_thinking: bool = False, stopped_by: str | None = None) -> list[str]:  # type: ignore[no-untyped-def]
    reply = Reply(show_thinking=show_thinking)
    reply.stopped_by = stopped_by
    for event in events:
        reply.apply(event)
    return reply.render().split("\n")


def test_commands_files_and_text_each_get_their_line() -> None:
    assert rendered(ToolStarted("execute_terminal", {"command": "uname -s"}), ToolQueued(2), ToolQueued(0),
                    ToolFinished("execute_terminal", "Linux", exit_code=0),
                    ToolStarted("execute_terminal", {"command": "false"}),
                    ToolFinished("execute_terminal", "", exit_code=1, full_output_id="x" * 32, full_output_bytes=9),
                    ToolStarted("send_file", {"path": "/data/out/report.txt"}),
                    FileReady("report.txt", b"r", path="/data/out/report.txt"),
                    ToolFinished("send_file", "sent", exit_code=0),
                    TextDelta("It printed "), TextDelta("Linux."), Done("It printed Linux.")) == [
        "-# ✅ `uname -s` → exit 0",
        "-# ❌ `false` → exit 1 · 📄 full output below",
        "-# 📎 `report.txt` attached below",
        "It printed Linux."]


def test_a_queued_command_says_how_many_are_ahead() -> None:
    assert rendered(ToolStarted("execute_terminal", {"command": "make"}), ToolQueued(1)) == [
        "-# ⏳ queued behind 1 command…"]


def test_a_wait_for_the_model_is_one_line_that_goes_when_the_request_starts() -> None:
    assert rendered(ModelQueued(3), ModelQueued(2)) == ["-# ⏳ waiting for the model (2 ahead)…"]
    assert rendered(ModelQueued(1), ModelQueued(0), TextDelta("Hi."), Done("Hi.")) == ["Hi."]
    ran = (ToolStarted("execute_terminal", {"command": "ls"}), ToolFinished("execute_terminal", "", exit_code=0))
    assert rendered(*ran, ModelQueued(1)) == ["-# ✅ `ls` → exit 0", "-# ⏳ waiting for the model (1 ahead)…"]
    assert rendered(*ran, ModelQueued(1), ModelQueued(0), TextDelta("Done.")) == ["-# ✅ `ls` → exit 0", "Done."]
    assert rendered(ModelQueued(1), Stopped(), stopped_by="Ada") == ["-# ⏹️ Stopped by Ada."]


def test_stops_replacements_and_notices_say_it_once() -> None:
    """One ⏹️ line per stop: the stopped command's own when one ran (issue 19), else a line of its own."""
    assert rendered(Replacing(), Notice("no images here"), ToolStarted("execute_terminal", {"command": "sleep 9"}),
                    Stopped(), stopped_by="Ada") == [
        "-# ↩️ Stopped my previous reply to answer this instead.", "-# ℹ️ no images here",
        "-# ⏹️ `sleep 9` stopped by Ada"]
    assert rendered(ToolStarted("execute_terminal", {"command": "sleep 9"}), Replaced()) == [
        "-# ⏹️ `sleep 9` stopped: a newer message took over"]
    assert rendered(TextDelta("Half an ans"), Stopped(), stopped_by="Ada") == ["Half an ans", "-# ⏹️ Stopped by Ada."]
    assert rendered(ToolStarted("execute_terminal", {"command": "ls"}), ToolFinished("execute_terminal", "", exit_code=0),
                    Stopped()) == ["-# ✅ `ls` → exit 0", "-# ⏹️ Stopped."]
    assert rendered(ToolStarted("send_file", {"path": "/data/a.png"}), Stopped(), stopped_by="Ada") == [
        "-# ⏹️ `a.png` not sent by Ada"]


def test_an_empty_answer_says_so_and_thinking_shows_only_when_asked() -> None:
    assert rendered(ThinkingDelta("hmm"), Done("")) == [NO_ANSWER]
    assert rendered(ThinkingDelta("hmm"), TextDelta("Yes."), show_thinking=True) == ["-# 💭 hmm", "Yes."]


def test_hidden_thinking_shows_one_line_while_it_runs() -> None:
    """SHOW_THINKING=false: `-# 💭 thinking…` while a reasoning phase runs, gone once text or a command starts."""
    assert rendered(ThinkingDelta("let me see")) == [THINKING]
    assert rendered(ThinkingDelta("let me see"), ThinkingDelta(" more")) == [THINKING]
    assert rendered(ThinkingDelta("hmm"), TextDelta("Yes.")) == ["Yes."]
    assert rendered(ThinkingDelta("hmm"), ToolStarted("execute_terminal", {"command": "ls"})) == [
        "-# ⚙️ running `ls`…"]
    assert rendered(ThinkingDelta("hmm"), ToolStarted("execute_terminal", {"command": "ls"}),
                    ToolFinished("execute_terminal", "", exit_code=0), ThinkingDelta("now what")) == [
        "-# ✅ `ls` → exit 0", THINKING]  # the next round thinks: the line is back, under the command
    assert rendered(ThinkingDelta("hmm"), TextDelta("Yes."), Done("Yes.")) == ["Yes."]
    assert rendered(ThinkingDelta("  ")) == [""]  # whitespace is no thinking yet
    assert rendered(ThinkingDelta("hmm"), show_thinking=True) == ["-# 💭 hmm"]  # shown: its own line instead
    changes: list[str] = []

    class Seen(Reply):
        def changed(self) -> None:
            changes.append(self.render())

    reply = Seen()
    for event in (ThinkingDelta("a"), ThinkingDelta("b"), ThinkingDelta("c"), TextDelta("Hi")):
        reply.apply(event)
    assert changes == [THINKING, "Hi"]  # one change when thinking starts, not one per piece of it


def test_an_ignored_message_is_marked_and_files_wait_for_the_end() -> None:
    reply = Reply()
    reply.apply(Ignored())
    assert reply.ignored and reply.render() == ""
    reply.apply(FileReady("a.png", b"png", caption="a chart"))
    assert [f.name for f in reply.files] == ["a.png"] and reply.render() == ""
