"""Project hygiene: one list of requirements, README commands that exist, clean notebooks."""
import json
import re
import tomllib

from conftest import REPO


def _req_names(lines):
    names = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"([A-Za-z0-9_.\-]+)\s*(==|>=|<=|<|>|~=)?\s*([^;\s]*)", line)
        names[m.group(1).lower().replace("_", "-")] = (m.group(2), m.group(3))
    return names


def test_environment_yml_uses_requirements_txt():
    text = (REPO / "environment.yml").read_text()
    assert "-r requirements.txt" in text
    # no package pinned in environment.yml's pip section beside the requirements file
    pip_section = text.split("- pip:")[1]
    entries = [l.strip()[2:] for l in pip_section.splitlines() if l.strip().startswith("- ")]
    assert set(entries) <= {"-r requirements.txt", "-e ."}, entries


def test_requirements_pin_everything_pyproject_needs():
    reqs = _req_names((REPO / "requirements.txt").read_text().splitlines())
    assert all(op == "==" for op, _ in reqs.values()), "requirements.txt pins exact versions"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        deps += extra
    for name, (op, ver) in _req_names(deps).items():
        assert name in reqs, f"{name} is a dependency in pyproject.toml but not pinned in requirements.txt"
    assert reqs["torch"][1] == "2.14.1" and reqs["torchvision"][1] == "0.29.1"
    assert reqs["jupyter-book"][1].startswith("1."), "jupyter-book must stay < 2"


def test_readme_commands_exist():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
    assert blocks, "README has a shell block"
    first = [l for l in blocks[0].splitlines() if l.strip() and not l.startswith("#")]
    assert len(first) >= 2
    for line in first[:2]:
        script = line.split()[1] if line.startswith("bash ") else None
        assert script and (REPO / script).is_file(), line
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci and "scripts/test.sh" in first[1]


def test_notebooks_are_committed_without_outputs():
    for nb_path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{nb_path.name} has outputs: strip them"
                assert cell.get("execution_count") is None, f"{nb_path.name} has execution counts"
