"""Chat templates: a conversation -> the prompt string a checkpoint was trained on, as Transformers 5.23
renders it.

    template = read_chat_template(folder)            # a string, {name: string}, or None
    prompt = render_chat_template(pick_chat_template(template), [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    ], add_generation_prompt=True, bos_token="<s>", eos_token="</s>")

A chat template is a Jinja program shipped with the checkpoint. Where a folder keeps it (the first found
wins, as in Transformers): chat_template.jinja (the default template) with additional_chat_templates/NAME.jinja
(named ones), chat_template.json ({"chat_template": ...}, what older processors wrote), or
tokenizer_config.json's "chat_template" (a string, or a list of {"name", "template"}).

The environment is the one Transformers gives templates, so that a template renders the same string:
a sandboxed, immutable Jinja environment (templates come from the internet: they cannot reach Python
internals or mutate the messages), `trim_blocks` and `lstrip_blocks` (a block tag's own line leaves no
newline or indent behind), the loop controls `{% break %}` / `{% continue %}`, `raise_exception(message)`,
`strftime_now(format)` (today's date, for templates that print it), a `tojson` filter that does not escape
HTML and takes indent / separators / sort_keys / ensure_ascii, and the `{% generation %}...{% endgeneration %}`
tag, which marks the text an assistant wrote (render_chat_template(return_generation_spans=True) returns
the character spans, e.g. for a loss mask). The template sees `messages`, `add_generation_prompt`, `tools`,
`documents` and the variables passed (the special tokens: bos_token, eos_token, ...).

continue_final_message: the prompt ends inside the last message (e.g. an assistant answer to be continued),
cut right after its text instead of closing the turn.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

_TAG = "CONTINUE_FINAL_MESSAGE_TAG "    # marks the end of the final message's text while rendering


# --------------------------------------------------------------------------------------------------
# Reading and choosing
# --------------------------------------------------------------------------------------------------

def read_chat_template(folder) -> Union[str, dict, None]:
    """The chat template(s) of a checkpoint folder: a string, a {name: template} dict where the folder has
    named templates besides the default, or None where it has none (see the module docstring for where)."""
    folder = Path(folder)
    templates = {}
    if (folder / "chat_template.jinja").is_file():
        templates["default"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    extra = folder / "additional_chat_templates"
    if extra.is_dir():
        for file in sorted(extra.glob("*.jinja")):
            templates[file.stem] = file.read_text(encoding="utf-8")
    if not templates and (folder / "chat_template.json").is_file():
        value = _read_json(folder / "chat_template.json").get("chat_template")
        templates = _as_templates(value, folder / "chat_template.json")
    if not templates and (folder / "tokenizer_config.json").is_file():
        value = _read_json(folder / "tokenizer_config.json").get("chat_template")
        templates = _as_templates(value, folder / "tokenizer_config.json")
    if not templates:
        return None
    return templates["default"] if list(templates) == ["default"] else templates


def pick_chat_template(templates: Union[str, dict, None], name: Optional[str] = None, tools=None) -> str:
    """The template to render: `name` among named templates (or `name` itself when it is a template
    string), else "tool_use" when tools are given and the checkpoint has one, else "default"."""
    if isinstance(templates, dict):
        if name is not None and name in templates:
            return templates[name]
        if name is not None and name not in templates and ("{{" in name or "{%" in name):
            return name
        if name is not None:
            raise ValueError(f"chat template {name!r} not found; the checkpoint has {sorted(templates)}")
        if tools is not None and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
        raise ValueError(f"the checkpoint has named chat templates {sorted(templates)} and none is 'default': "
                         f"pass chat_template= one of these names")
    if name is not None:
        return name
    if templates is None:
        raise ValueError("no chat template: the folder has no chat_template.jinja, chat_template.json or "
                         "\"chat_template\" in tokenizer_config.json; pass chat_template= a Jinja template string")
    return templates


def write_chat_template(folder, template) -> list:
    """Write chat_template.jinja (and additional_chat_templates/NAME.jinja for named templates besides the
    default), as Transformers' save_pretrained does. Returns the paths written."""
    folder = Path(folder)
    templates = {"default": template} if isinstance(template, str) else dict(template)
    written = []
    for name, text in templates.items():
        if name == "default":
            file = folder / "chat_template.jinja"
        else:
            (folder / "additional_chat_templates").mkdir(exist_ok=True)
            file = folder / "additional_chat_templates" / f"{name}.jinja"
        file.write_text(text, encoding="utf-8")
        written.append(file)
    return written


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

def render_chat_template(template: str, messages, *, add_generation_prompt: bool = False,
                         continue_final_message: bool = False, tools=None, documents=None,
                         return_generation_spans: bool = False, **variables):
    """Render one conversation. messages: a list of {"role": str, "content": str or a list of typed parts
    ({"type": "text", "text": ...}, {"type": "image"}, ...)} dicts (None values are dropped, as Transformers
    drops them). variables: what else the template reads (bos_token, eos_token, ...; None values left out).
    Returns the string, or (string, [(start, end), ...]) with return_generation_spans: the character spans
    of the `{% generation %}` blocks."""
    import jinja2

    messages = _check_messages(messages)
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt cannot both be set: the first "
                         "continues the last message, the second opens a new assistant turn")
    if continue_final_message and return_generation_spans:
        raise ValueError("continue_final_message cannot be used with return_generation_spans")
    compiled = _compile(template)
    final_text = None
    if continue_final_message:
        final_text = _tag_final_message(messages, template)
    spans = []
    context = dict({k: v for k, v in variables.items() if v is not None}, messages=messages, tools=tools,
                   documents=documents, add_generation_prompt=add_generation_prompt)
    try:
        if return_generation_spans:
            text = _render_tracking(compiled, context, spans)
        else:
            text = compiled.render(**context)
    except (jinja2.exceptions.TemplateError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"the chat template failed to render{_where(error)}: {error}") from error
    if continue_final_message:
        text = _cut_after_final_message(text, final_text)
    return (text, spans) if return_generation_spans else text


@lru_cache(maxsize=32)
def _compile(template: str):
    """The template compiled in Transformers' environment (see the module docstring); a syntax error is a
    ValueError naming the template's line."""
    import jinja2
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if not isinstance(template, str):
        raise TypeError(f"chat template must be a string, got {type(template).__name__}")

    class Generation(Extension):
        """{% generation %}...{% endgeneration %}: renders its body, and records where it landed."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_mark", []), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            text = caller()
            tracker = getattr(self.environment, "span_tracker", None)
            if tracker is not None:   # (the text rendered so far, the spans found)
                blocks, spans = tracker
                start = len("".join(blocks))
                spans.append((start, start + len(text)))
            return text

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.span_tracker = None
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as error:
        raise ValueError(f"the chat template has a Jinja syntax error on line {error.lineno}: {error.message}\n"
                         f"    {_line(template, error.lineno)}") from error


def _render_tracking(compiled, context: dict, spans: list) -> str:
    """Render block by block, so that each {% generation %} block knows how much text came before it."""
    blocks = []
    compiled.environment.span_tracker = (blocks, spans)
    try:
        for block in compiled.generate(**context):
            blocks.append(block)
    finally:
        compiled.environment.span_tracker = None
    return "".join(blocks)


def _tag_final_message(messages: list, template: str) -> str:
    """Append the marker to the last message's (last) text; returns that text."""
    if not messages:
        raise ValueError("continue_final_message is set but the conversation is empty")
    content = messages[-1].get("content")
    if content is None:
        raise ValueError('continue_final_message is set but the final message has no "content" to continue')
    if "content" not in template:
        raise ValueError('continue_final_message is set but the chat template never reads "content"')
    if isinstance(content, str):
        messages[-1]["content"] = content + _TAG
        return content
    for part in reversed(content):
        if "text" in part:
            text = part["text"]
            part["text"] = text + _TAG
            return text
    raise ValueError("continue_final_message is set but the final message has no text part to continue")


def _cut_after_final_message(text: str, final_text: str) -> str:
    """The rendered prompt up to the end of the final message's text (where the marker landed)."""
    if final_text.strip() not in text or _TAG.strip() not in text:
        raise ValueError("continue_final_message is set but the chat template dropped part of the final message "
                         f"({final_text.strip()!r} is not in what it rendered)")
    at = text.rindex(_TAG.strip())
    # Where the template kept the marker's trailing space, cut exactly; where it trimmed it, trim too.
    return text[:at] if text[at:at + len(_TAG)] == _TAG else text[:at].rstrip()


def _check_messages(messages) -> list:
    """A list of message dicts with a string role and a string or list-of-parts content; a copy, with None
    values dropped (the template cannot change the caller's messages)."""
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got "
                        f"{type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: a conversation needs at least one message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        if not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] needs a 'role' string (user, assistant, system, ...), got "
                             f"{m.get('role')!r}")
        content = m.get("content")
        if isinstance(content, (list, tuple)):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise ValueError(f"messages[{i}]['content'][{j}] must be a dict with a 'type' "
                                     f"('text', 'image', ...), got {part!r:.60}")
            content = [dict(part) for part in content]
        elif content is not None and not isinstance(content, str):
            raise TypeError(f"messages[{i}]['content'] must be a string or a list of typed parts, got "
                            f"{type(content).__name__}")
        out.append({k: v for k, v in dict(m, content=content).items() if v is not None})
    return out


def _where(error) -> str:
    """' (template line N)' where the error happened: its own line number, else the template's frame in the
    traceback (Jinja runs templates as Python code whose frames carry the template's lines)."""
    lineno, tb = getattr(error, "lineno", None), error.__traceback__
    while lineno is None and tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            lineno = tb.tb_lineno
        tb = tb.tb_next
    return f" (template line {lineno})" if lineno else ""


def _line(template: str, lineno: Optional[int]) -> str:
    lines = template.splitlines()
    return lines[lineno - 1].strip() if lineno and 0 < lineno <= len(lines) else ""


def _read_json(file: Path) -> dict:
    with open(file, encoding="utf-8") as f:
        d = json.load(f)
    if not isinstance(d, dict):
        raise ValueError(f"{file} holds a {type(d).__name__}, expected a JSON object")
    return d


def _as_templates(value, file: Path) -> dict:
    """A "chat_template" value (a string, or a list of {"name", "template"}) -> {name: template}."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list) and all(isinstance(t, dict) and "name" in t and "template" in t for t in value):
        return {t["name"]: t["template"] for t in value}
    raise ValueError(f'{file}: "chat_template" must be a string or a list of {{"name", "template"}}, got '
                     f"{type(value).__name__}")


__all__ = ["read_chat_template", "pick_chat_template", "render_chat_template", "write_chat_template"]
