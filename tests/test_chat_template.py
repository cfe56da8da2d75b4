"""Chat templates (minivlm.processing.chat_template, Tokenizer.apply_chat_template and the processors')
against Transformers' apply_chat_template on the same folders: the rendered strings equal, character for
character, for templates that use each piece of the environment, the usual chat formats, tools and
documents, add_generation_prompt and continue_final_message."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _tokenizers
from minivlm.processing import Tokenizer
from minivlm.processing.chat_template import pick_chat_template, read_chat_template, render_chat_template

# Templates written here in the styles checkpoints use.
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
          "{% set messages = messages[1:] %}{% else %}{% set system = false %}{% endif %}"
          "{% for message in messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system %}{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
          "{% endfor %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}")
# LLaVA-NeXT style: content as typed parts, an <image> per image part.
LLAVA = """{% for message in messages %}
    {% if message['role'] == 'user' %}[INST] {% else %} {% endif %}
    {% for part in message['content'] %}
        {% if part['type'] == 'image' %}<image>
{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}
    {% endfor %}
    {% if message['role'] == 'user' %} [/INST]{% else %}{{ eos_token }}{% endif %}
{% endfor %}"""
# Every piece of the environment: trim/lstrip blocks, loop controls, tojson's options and non-ASCII,
# strftime_now, raise_exception, tools and documents, the generation tag.
FEATURES = """{% for m in messages %}
    {% if m['role'] == 'banned' %}{{ raise_exception('banned role at ' ~ loop.index0) }}{% endif %}
    {% if loop.index0 > 5 %}{% break %}{% endif %}
    {% if m['role'] == 'skip' %}{% continue %}{% endif %}
    <{{ m['role'] }}>
    {% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}
{% endfor %}
{% if tools %}tools: {{ tools | tojson(indent=2, sort_keys=True) }}{% endif %}
{% if documents %}docs: {{ documents | tojson(separators=(',', ':')) }} {{ documents | tojson(ensure_ascii=True) }}{% endif %}
year: {{ strftime_now('%Y') }}
{% if add_generation_prompt %}<assistant>{% endif %}"""

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, what's 2+2?"},
                {"role": "assistant", "content": "4."}, {"role": "user", "content": "And café × 3? 日本"}]
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Météo",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
DOCUMENTS = [{"title": "Ünïcode", "text": "<b>bold</b> & more"}]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{name: (Transformers tokenizer, minivlm tokenizer)}, each saved by Transformers with its template."""
    import transformers

    root = tmp_path_factory.mktemp("chat")
    out = {}
    for name, template in {"chatml": CHATML, "llama2": LLAMA2, "mistral": MISTRAL, "llava": LLAVA,
                           "features": FEATURES}.items():
        _tokenizers.llama(root / name)
        hf = transformers.AutoTokenizer.from_pretrained(str(root / name))
        hf.chat_template = template
        hf.save_pretrained(root / name)
        out[name] = (transformers.AutoTokenizer.from_pretrained(str(root / name)), Tokenizer.from_pretrained(root / name))
    return root, out


def _both(pair, messages, **kwargs):
    hf, mv = pair
    return (mv.apply_chat_template(messages, **kwargs),
            hf.apply_chat_template(messages, tokenize=False, **kwargs))


def test_saved_template_is_read_back(folders):
    root, pairs = folders
    assert (root / "chatml" / "chat_template.jinja").is_file()     # where Transformers 5.23 writes it
    assert read_chat_template(root / "chatml") == CHATML
    assert pairs["chatml"][1].chat_template == CHATML


@pytest.mark.parametrize("name", ["chatml", "mistral", "features"])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_formats_equal(folders, name, generation_prompt):
    _, pairs = folders
    messages = CONVERSATION[1:] if name == "mistral" else CONVERSATION
    got, expected = _both(pairs[name], messages, add_generation_prompt=generation_prompt)
    assert got == expected


def test_llama2_chat_with_system_prompt_and_raise_exception(folders):
    _, pairs = folders
    got, expected = _both(pairs["llama2"], CONVERSATION)
    assert got == expected and got.startswith("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi")
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ValueError, match="Conversation roles must alternate"):
        pairs["llama2"][1].apply_chat_template(bad)


def test_image_parts(folders):
    _, pairs = folders
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
                {"role": "user", "content": [{"type": "text", "text": "And here?"}, {"type": "image"}]}]
    got, expected = _both(pairs["llava"], messages)
    assert got == expected and got.count("<image>") == 2


def test_tools_documents_and_tojson(folders):
    _, pairs = folders
    got, expected = _both(pairs["features"], CONVERSATION, tools=TOOLS, documents=DOCUMENTS)
    assert got == expected
    assert "Météo" in got and "\\u00dc" in got and "<b>bold</b>" in got   # ensure_ascii only where asked; no HTML escaping
    with pytest.raises(ValueError, match=r"template line \d+.*banned role at 1"):
        pairs["features"][1].apply_chat_template([CONVERSATION[0], {"role": "banned", "content": "x"}])


def test_loop_controls(folders):
    _, pairs = folders
    messages = [{"role": "skip", "content": "hidden"}] + [{"role": "user", "content": f"m{i}"} for i in range(9)]
    got, expected = _both(pairs["features"], messages)
    assert got == expected and "hidden" not in got and "m4" in got and "m5" not in got


def test_generation_spans_match_transformers_assistant_mask(folders):
    """The spans the generation tag records cover the assistant's text, the tokens Transformers masks."""
    hf, mv = folders[1]["features"]
    text, spans = render_chat_template(mv.chat_template, CONVERSATION, return_generation_spans=True)
    assert [text[a:b] for a, b in spans] == ["4."]
    out = hf.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert hf.decode(masked) == "4."


@pytest.mark.parametrize("content", ["The answer is", [{"type": "text", "text": "The answer is"}]])
def test_continue_final_message(folders, content):
    _, pairs = folders
    messages = CONVERSATION[1:] + [{"role": "assistant", "content": content}]
    name = "chatml" if isinstance(content, str) else "llava"
    if name == "llava":
        messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                    {"role": "assistant", "content": content}]
    got, expected = _both(pairs[name], messages, continue_final_message=True)
    assert got == expected and got.endswith("The answer is")
    with pytest.raises(ValueError, match="cannot both be set"):
        pairs[name][1].apply_chat_template(messages, continue_final_message=True, add_generation_prompt=True)


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "tool"]), _TEXT), min_size=1, max_size=5),
       st.booleans())
def test_random_conversations_equal(folders, turns, generation_prompt):
    _, pairs = folders
    messages = [{"role": r, "content": c} for r, c in turns]
    got, expected = _both(pairs["chatml"], messages, add_generation_prompt=generation_prompt)
    assert got == expected


def test_tokenize_gives_the_ids_of_the_string(folders):
    hf, mv = folders[1]["mistral"]
    ids = mv.apply_chat_template(CONVERSATION[1:], tokenize=True)
    assert ids == hf.apply_chat_template(CONVERSATION[1:], tokenize=True, return_dict=False)


def test_where_templates_are_read_from(tmp_path):
    """chat_template.jinja (+ additional_chat_templates/), else chat_template.json, else tokenizer_config.json."""
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "default", "template": "A"}, {"name": "tool_use", "template": "T"}]}))
    assert read_chat_template(tmp_path) == {"default": "A", "tool_use": "T"}
    assert pick_chat_template(read_chat_template(tmp_path)) == "A"
    assert pick_chat_template(read_chat_template(tmp_path), tools=TOOLS) == "T"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "J"}))
    assert read_chat_template(tmp_path) == "J"
    (tmp_path / "chat_template.jinja").write_text("D")
    (tmp_path / "additional_chat_templates").mkdir()
    (tmp_path / "additional_chat_templates" / "rag.jinja").write_text("R")
    assert read_chat_template(tmp_path) == {"default": "D", "rag": "R"}
    assert pick_chat_template(read_chat_template(tmp_path), name="rag") == "R"


def test_processor_template(tmp_path):
    """A processor saved by Transformers with a template writes chat_template.jinja; minivlm's processor
    renders it as Transformers' does."""
    import transformers

    from minivlm.processing import LlavaNextProcessor

    tok = _tokenizers.llama(tmp_path / "tok")
    tok.add_tokens([transformers.AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    images = transformers.LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                                     image_grid_pinpoints=[[16, 16], [16, 32]])
    transformers.LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=4, chat_template=LLAVA,
                                    vision_feature_select_strategy="default").save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "chat_template.jinja").read_text() == LLAVA
    hf = transformers.LlavaNextProcessor.from_pretrained(str(tmp_path / "p"), backend="pil")
    mv = LlavaNextProcessor.from_pretrained(tmp_path / "p")
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    assert mv.apply_chat_template(conversation, add_generation_prompt=True) == \
        hf.apply_chat_template(conversation, add_generation_prompt=True)
    assert mv.apply_chat_template([conversation, conversation]) == hf.apply_chat_template([conversation, conversation])


# -- bad input -----------------------------------------------------------------------------------------

def test_syntax_error_names_the_line():
    with pytest.raises(ValueError, match=r"Jinja syntax error on line 2: .*\n    \{% if %\}"):
        render_chat_template("ok\n{% if %}\n", [{"role": "user", "content": "x"}])


def test_render_error_names_the_line():
    with pytest.raises(ValueError, match=r"failed to render \(template line 2\)"):
        render_chat_template("a\n{{ messages[0]['content'].nope() }}", [{"role": "user", "content": "x"}])


@pytest.mark.parametrize("messages, error, message", [
    ("hello", TypeError, "messages must be a list"),
    ([], ValueError, "messages is empty"),
    ([["user", "x"]], TypeError, r"messages\[0\] must be a dict"),
    ([{"content": "x"}], ValueError, r"messages\[0\] needs a 'role' string"),
    ([{"role": "user", "content": 3}], TypeError, r"messages\[0\]\['content'\] must be a string or a list"),
    ([{"role": "user", "content": [{"text": "x"}]}], ValueError, r"messages\[0\]\['content'\]\[0\] must be a dict with a 'type'"),
])
def test_bad_messages(messages, error, message):
    with pytest.raises(error, match=message):
        render_chat_template(CHATML, messages)


def test_no_template(tmp_path):
    _tokenizers.llama(tmp_path)
    with pytest.raises(ValueError, match="no chat template: the folder has no chat_template.jinja"):
        Tokenizer.from_pretrained(tmp_path).apply_chat_template([{"role": "user", "content": "x"}])
