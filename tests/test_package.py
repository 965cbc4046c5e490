"""The package as a newcomer meets it: every subpackage from a plain ``import r1lab``, an
import that stays light, and README facts that match what the code reports."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# the subpackages and modules the README and users reach as r1lab.<name>
SUBMODULES = ("rewards", "tasks", "eval", "engine", "model", "train", "checkpoint", "tokenizer", "reasoning",
              "generate", "accounting", "config", "demo_r1zero")
HEAVY = ("transformers", "r1lab.rewards", "r1lab.tasks", "r1lab.eval", "r1lab.engine", "r1lab.train",
         "r1lab.checkpoint", "r1lab.tokenizer", "r1lab.generate", "r1lab.demo_r1zero", "math_verify")


def _fresh(code: str) -> dict:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_every_subpackage_is_an_attribute_after_a_plain_import():
    code = (
        "import json, sys, types\n"
        "import r1lab\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        f"kinds = {{n: isinstance(getattr(r1lab, n), types.ModuleType) for n in {SUBMODULES!r}}}\n"
        "got = r1lab.rewards.accuracy('so </think> the answer is \\\\boxed{4}', '4')\n"
        "wrong = r1lab.rewards.accuracy('so </think> the answer is \\\\boxed{5}', '4')\n"
        "try:\n"
        "    r1lab.no_such_module\n"
        "    missing = 'no error'\n"
        "except AttributeError as e:\n"
        "    missing = str(e)\n"
        "print(json.dumps({'heavy': heavy, 'kinds': kinds, 'got': got, 'wrong': wrong, 'missing': missing}))\n"
    )
    out = _fresh(code)
    assert out["heavy"] == [], f"import r1lab alone imported {out['heavy']}"
    assert out["kinds"] == {n: True for n in SUBMODULES}
    assert (out["got"], out["wrong"]) == (1.0, 0.0)
    assert out["missing"] == "module 'r1lab' has no attribute 'no_such_module'"


def test_import_r1lab_stays_light():
    """A plain import loads no transformers, engine, trainer, rewards or checkpoint code."""
    out = _fresh("import json, sys\nimport r1lab\nprint(json.dumps(sorted(sys.modules)))\n")
    assert not [m for m in out if m.split(".")[0] == "transformers"]
    assert not [m for m in out if m in HEAVY]


def _readme_params(name: str) -> str:
    m = re.search(rf"`{re.escape(name)}` \(a ([\d.]+M)-parameter", README.read_text())
    assert m, f"README no longer states {name}'s parameter count"
    return m.group(1)


def test_readme_parameter_count_of_the_shipped_base_is_true():
    from r1lab.checkpoint import load_config
    from r1lab.model import build_model

    model = build_model(load_config("r1zero-base"), device="meta")
    total = sum(p.numel() for p in model.parameters())  # shared tensors once, as `r1lab info` counts
    assert _readme_params("r1zero-base") == f"{total / 1e6:.1f}M"


def test_readme_says_which_tests_make_test_runs():
    addopts = re.search(r"^addopts\s*=\s*(.*)$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    text = README.read_text()
    assert "runs everything" not in text
    if "not slow" in addopts:
        assert "make test-all" in text and "slow" in text.split("## Development", 1)[1]
        assert "slow ones deselected" in text.splitlines()[2]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test-all:.*\n\t.*pytest -m \"\"", makefile, re.M)

