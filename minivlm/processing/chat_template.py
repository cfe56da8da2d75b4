"""Placeholder until the chat-template module lands."""


def read_chat_template(folder):
    return None


def pick_chat_template(templates, name=None, tools=None):
    raise NotImplementedError


def render_chat_template(template, messages, **kwargs):
    raise NotImplementedError
