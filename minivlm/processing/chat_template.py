"""Placeholder until the chat-template module lands."""


def read_chat_template(folder):
    return None


def pick_chat_template(templates, name=None, tools=None):
    raise NotImplementedError


def render_chat_template(template, messages, **kwargs):
    raise NotImplementedError


def write_chat_template(folder, template):
    from pathlib import Path
    folder = Path(folder)
    if isinstance(template, str):
        (folder / "chat_template.jinja").write_text(template)
        return [folder / "chat_template.jinja"]
    raise NotImplementedError
