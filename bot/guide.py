"""What /help says: how to talk to the bot here, built from the settings that decide it."""
from __future__ import annotations

from core import Seen, Settings
from core.sizes import human_size


def help_text(settings: Settings, *, bot_name: str, in_dm: bool, mode: str, model: str,
              has_persona: bool, admin: bool, seen: Seen | None = None, my_thread: bool = False,
              tools: dict[str, list[str]] | None = None) -> str:
    """The whole /help answer (under Discord's 2000 characters). `mode`: this channel's (mention,
    all or thread); `my_thread`: this is a thread the bot started; `tools`: the MCP servers usable
    here and the tools known of each."""
    if in_dm:
        how = "Just write here: every message in this DM goes to me."
    elif my_thread:
        how = "This is one of my threads: just write here, nobody needs to mention me."
    elif mode == "all":
        how = f"In this channel I answer every message; elsewhere, mention @{bot_name} or reply to me."
    elif mode == "thread":
        how = (f"Mention @{bot_name} here and I answer in a new thread named after your question; in my threads, "
               "just write (no mention needed).")
    else:
        how = f"Mention @{bot_name} in a message, or reply to one of my messages."
    if not in_dm and settings.allow_dms:
        how += " You can also DM me."
    network = "with internet access" if settings.vm_network else "without internet access"
    if settings.tools:
        can = [
            f"• Run shell commands in your own Linux sandbox for this conversation ({network}). Files, "
            "installed packages and background jobs stay between messages.",
            f"• Each command stops after {settings.command_timeout} s (at most {settings.command_timeout_max} s "
            f"when I ask for more); the sandbox has {human_size(settings.vm_memory)} of memory and "
            f"{human_size(settings.vm_disk)} of disk.",
            f"• Attach files to a message to put them in `/data`, where I can read them (up to "
            f"{human_size(settings.upload_max_file_bytes)} each); I can see pictures when the model can.",
            "• I can send files back: charts, converted files, long outputs, attached to my reply.",
        ]
        reset = ("• `/reset`: forget this conversation and restart your sandbox (`keep_container` keeps it, "
                 "`files` deletes your files too).")
    else:  # chat only (TOOLS=off)
        can = [
            "• Answer, explain, write and translate. This bot is in chat-only mode: I run no commands.",
            (f"• Attach text files and I read them (up to {human_size(settings.inline_text_max_bytes)} of each), "
             "or pictures, which I see when the model can." if settings.inline_text_max_bytes else
             "• Attach pictures and I see them when the model can."),
        ]
        reset = "• `/reset`: forget this conversation (`files` deletes the files you attached too)."
    files = ("• `/files`: your files in `/data` here, and a menu to download one." if settings.tools else
             "• `/files`: the files you attached here, and a menu to download one.")
    if tools:
        can.append("• Tools from services the operators connected: " + "; ".join(
            f"**{name}** ({_names(known)})" for name, known in tools.items()) + ".")
    lines = [
        "**Talking to me**",
        f"• {how} Each person has a conversation of their own with me in each channel (and in each thread), "
        "and I remember it across restarts.",
        "• Reply to any message (and mention me) to ask about it: I see the message you replied to.",
        f"• I read up to {settings.context_tokens:,} tokens of a conversation at a time; "
        + ("earlier messages are kept as a short summary" if settings.summary else "earlier messages drop out")
        + (f" (here I now see your last {seen.shown} messages"
           + (" and a summary of the rest" if seen.summarized else "") + ")" if seen else "")
        + ". `/reset` starts over.",
        "• While I answer, **Stop** ends my reply" + (" and any command I am running" if settings.tools else "")
        + ". Messages you send meanwhile get ⏳ and are answered together right after.",
        "",
        "**What I can do**",
        *can,
        "",
        "**Commands**",
        reset,
        files,
        "• `/sessions`: your conversations.",
        "• `/usage`: what you used today and this week, and your daily budgets if there are any.",
        "• `/chat [topic]`: start a thread with me in this channel; nobody needs to mention me there.",
        "• `/export`: your conversations as a file; `/forget`: delete everything I hold of you, everywhere.",
    ]
    if admin:
        lines.append("• `/admin status`, `/admin model`, `/admin prompt`, `/admin channel`, `/admin tools`, "
                     "`/admin audit`, `/admin sessions`, `/admin reset`, `/admin stop`, `/admin usage`, "
                     "`/admin forget`: for server managers, about their server.")
    persona = " with a persona set by the operators" if has_persona else ""
    lines += ["", f"Here I use the model `{model}`{persona}."]
    return "\n".join(lines)


def _names(tools: list[str], most: int = 8) -> str:
    if not tools:
        return "its tools are listed when first used"
    return ", ".join(tools[:most]) + (f" and {len(tools) - most} more" if len(tools) > most else "")
