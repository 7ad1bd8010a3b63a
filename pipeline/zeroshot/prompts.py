"""The prompts of each class for zero-shot classification: CLIP's published UCF-101 templates filled with the
class name in words, a file of templates, or a file of prompts per class. No torch.

Class names become words as a person would say them: CamelCase and underscores split, lower case
(``ApplyEyeMakeup`` -> "apply eye makeup", ``brush_hair`` -> "brush hair", ``YoYo`` -> "yo yo").
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipeline.errors import ActrecError

# CLIP's 48 templates for UCF-101 (openai/CLIP, data/prompts.md): every noun, article and verb form combined.
_FORMS = ("", "using ", "doing ", "during ", "performing ", "practicing ")
CLIP_UCF101_TEMPLATES = tuple(f"a {noun} of {article} person {form}{{}}." for form in _FORMS
                              for article in ("a", "the") for noun in ("photo", "video", "example", "demonstration"))
BUILTIN_TEMPLATES = {"clip-ucf101": CLIP_UCF101_TEMPLATES}
MAX_PROMPT_CHARS = 1000


def class_words(name: str) -> str:
    """A class name in words: CamelCase and underscores split, lower case."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name.replace("_", " "))
    return " ".join(spaced.lower().split())


def class_prompts(class_names: list[str], templates: str, prompts_file: str = "") -> dict[str, list[str]]:
    """Each class's prompts: from ``prompts_file`` (YAML: class name -> list of prompts) when given, else the
    ``templates`` (a built-in name or a file of one template per line, ``{}`` marking the class)."""
    if prompts_file:
        return _read_prompts(Path(prompts_file), class_names)
    filled = {name: [t.format(class_words(name)) for t in read_templates(templates)] for name in class_names}
    return filled


def read_templates(templates: str) -> tuple[str, ...]:
    """A built-in set's templates, or a file's (blank lines and ``#`` comments skipped)."""
    if templates in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[templates]
    path = Path(templates)
    if not path.is_file():
        raise ActrecError(f"zeroshot.templates={templates}: neither a built-in set ({', '.join(BUILTIN_TEMPLATES)}) "
                          f"nor a file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    found = tuple(line for line in lines if line and not line.startswith("#"))
    if not found:
        raise ActrecError(f"{path}: no templates in it; write one per line, with {{}} where the class goes")
    for line in found:
        if line.count("{}") != 1 or re.search(r"\{(?!\})|(?<!\{)\}", line.replace("{}", "")):
            raise ActrecError(f"{path}: template {line!r} must hold {{}} exactly once (where the class goes)")
    return found


def _read_prompts(path: Path, class_names: list[str]) -> dict[str, list[str]]:
    """A YAML mapping of every class to a non-empty list of prompts; anything else is one line naming it."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ActrecError(f"zeroshot.prompts={path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ActrecError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:160]})") from None
    if not data:
        raise ActrecError(f"{path} is empty; give each class a list of prompts (ClassName: [\"a video of ...\"])")
    if not isinstance(data, dict):
        raise ActrecError(f"{path}: expected a mapping of class name -> list of prompts, got a {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - set(class_names))
    if unknown:
        raise ActrecError(f"{path}: {unknown[0]!r} is not a class of the split files (classes: "
                          f"{', '.join(class_names[:5])}, ...)")
    prompts = {}
    for name in class_names:
        listed = data.get(name)
        listed = [listed] if isinstance(listed, str) else listed
        if not listed or not isinstance(listed, list) or not all(isinstance(p, str) and p.strip() for p in listed):
            raise ActrecError(f"{path}: class {name!r} has no prompts; give it a list of non-empty prompts")
        long = next((p for p in listed if len(p) > MAX_PROMPT_CHARS), None)
        if long:
            raise ActrecError(f"{path}: a prompt of {name!r} is {len(long)} characters (at most {MAX_PROMPT_CHARS})")
        prompts[name] = [p.strip() for p in listed]
    return prompts
