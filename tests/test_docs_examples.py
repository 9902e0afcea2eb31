"""Every configuration example in the docs is accepted by the plugin's own
validation, with no warning: the docs cannot drift from the code."""

import glob
import json
import os
import re

import pytest
import yaml

from ai_load_balancer import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(glob.glob(os.path.join(ROOT, "*.md")) + glob.glob(os.path.join(ROOT, "docs", "*.md")))


def examples():
    for path in DOCS:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for n, block in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.S)):
            doc = yaml.safe_load(block)
            if isinstance(doc, dict) and "lb_policy" in doc:
                yield pytest.param(doc, id=f"{os.path.basename(path)}#{n}")


@pytest.mark.parametrize("doc", list(examples()))
def test_documented_config_is_accepted(doc):
    _, warnings = config.parse(json.dumps(doc).encode())
    assert warnings == []


def test_docs_have_examples():
    assert len(list(examples())) >= 4
