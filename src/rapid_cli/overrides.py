"""Commands rapid prints for you to paste (`try it: rapid eval ...`, `resume with: rapid train ...`): every value
quoted twice over, for Hydra's override grammar (a path holding '=' or ',', as a sweep job's directory does, is
otherwise read as a second override or a sweep) and for the shell (spaces, quotes, brackets)."""

from __future__ import annotations

import re
import shlex


def hydra_value(value) -> str:
    """A value as Hydra's override grammar reads it back.

    >>> hydra_value({"_target_": "m.fn", "weight": 0.5, "pattern": "<a>.*</a>"})
    "{_target_: m.fn, weight: 0.5, pattern: '<a>.*</a>'}"
    >>> hydra_value("multirun/x/seed=0,algo=grpo/model")
    "'multirun/x/seed=0,algo=grpo/model'"
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(hydra_value(v) for v in value) + "]"
    if value is None or isinstance(value, (bool, int, float)):
        return ({None: "null", True: "true", False: "false"}.get(value, str(value)) if not isinstance(value, float)
                else repr(value))
    text = str(value)
    # bare where Hydra reads it back as this string (and the shell leaves it alone): no '=', ',', space or quote,
    # and nothing Hydra would read as a number, a bool or null
    if (text and all(ch.isalnum() or ch in "._-/:+@" for ch in text)
            and not re.fullmatch(r"[-+]?(\d[\d_]*\.?\d*|\.\d+)(e[-+]?\d+)?|true|false|null|[-+]?(nan|inf)", text,
                                 re.IGNORECASE)):
        return text
    # Hydra reads backslashes literally except before a quote (then they escape): escape those runs only
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text) + "'"


def shell_arg(arg: str) -> str:
    """`arg` as one shell word, quoted only as much as it needs: bare, in double quotes around Hydra's single
    quotes when nothing in it is special inside double quotes, else shlex's quoting.

    >>> shell_arg("task=arith"), shell_arg("model.path='a=b,c'"), shell_arg("x=it's")
    ('task=arith', '"model.path=\\'a=b,c\\'"', '"x=it\\'s"')
    """
    if shlex.quote(arg) == arg:
        return arg
    if not re.search(r'[$`"\\!]', arg):
        return f'"{arg}"'
    return shlex.quote(arg)


def override(key: str, value) -> str:
    """`key=value` as one shell word that Hydra reads back as that value.

    >>> override("model.path", "/runs/seed=0,lr=1e-6/checkpoints/round-000002/model")
    '"model.path=\\'/runs/seed=0,lr=1e-6/checkpoints/round-000002/model\\'"'
    """
    return shell_arg(f"{key}={hydra_value(value)}")
