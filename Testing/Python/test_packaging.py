"""Extension packaging: what the CMake files install is what the repository holds (no Slicer needed).

The Slicer build installs only what a module's ``CMakeLists.txt`` lists and what the top-level
``install()`` rules match; a file left out is silently missing from the Extension Manager's
package. These tests read the CMake files with a small parser (commands, quoted arguments,
comments, ``set``/``list(APPEND)`` variables) and compare them with the files in the checkout:
tracked by git, or new and not ignored (so a file is checked before its first commit).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIRS = ["INRSegmentation", "MetaShapeReconstruction", "SegmentEditorSparseCompletion"]
PACKAGES = ["inr_engine", "inr_slicer"]  # installed beside the modules by the top-level install() rules
RESOURCE_SUFFIXES = {".ui", ".png", ".txt", ".json"}
INDEX_SCHEMA_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                     "dicom_support_rule", "build_subdirectory", "enabled", "tier"}  # catalog entry schema v1.0.2


# --- a small CMake reader ---------------------------------------------------------------------------------------

def parse_cmake(text: str) -> list[tuple[str, list[tuple[str, bool]]]]:
    """The commands of a CMake file: (lower-case name, [(argument, quoted)]), comments dropped."""
    commands, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            i = _skip_comment(text, i)
        else:
            m = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(").match(text, i)
            if not m:
                raise ValueError(f"cannot parse CMake near {text[i:i + 40]!r}")
            args, i = _parse_arguments(text, m.end())
            commands.append((m.group(1).lower(), args))
    return commands


def _skip_comment(text: str, i: int) -> int:
    bracket = re.compile(r"#\[(=*)\[").match(text, i)
    if bracket:
        end = text.find(f"]{bracket.group(1)}]", bracket.end())
        return len(text) if end < 0 else end + len(bracket.group(1)) + 2
    end = text.find("\n", i)
    return len(text) if end < 0 else end + 1


def _parse_arguments(text: str, i: int) -> tuple[list[tuple[str, bool]], int]:
    args, current, depth = [], "", 0
    while i < len(text):
        c = text[i]
        if c == '"':
            j, value = i + 1, ""
            while text[j] != '"':
                if text[j] == "\\":
                    j += 1
                value += text[j]
                j += 1
            args.append((value, True))
            i = j + 1
            continue
        if c == "#" and not current:
            i = _skip_comment(text, i)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                if current:
                    args.append((current, False))
                return args, i + 1
            depth -= 1
        if c.isspace() and depth == 0:
            if current:
                args.append((current, False))
            current = ""
        else:
            current += c
        i += 1
    raise ValueError("unterminated CMake command")


def evaluate_cmake(path: Path) -> tuple[dict[str, list[str]], list[tuple[str, list[str]]]]:
    """Variables set with ``set()``/``list(APPEND)`` and every command with its arguments expanded."""
    variables: dict[str, list[str]] = {}
    commands = []

    def expand(args):
        out = []
        for value, quoted in args:
            whole = re.fullmatch(r"\$\{(\w+)\}", value)
            if whole and not quoted and whole.group(1) in variables:
                out.extend(variables[whole.group(1)])  # an unquoted list variable splices in
            else:
                out.append(re.sub(r"\$\{(\w+)\}", lambda m: ";".join(variables.get(m.group(1), [m.group(0)])),
                                  value))
        return out

    for name, raw in parse_cmake(path.read_text(encoding="utf-8")):
        args = expand(raw)
        if name == "set" and args:
            values = args[1:]
            if "CACHE" in values:
                values = values[:values.index("CACHE")]
            variables[args[0]] = [v for v in values if v != "PARENT_SCOPE"]
        elif name == "list" and len(args) >= 2 and args[0] == "APPEND":
            variables.setdefault(args[1], []).extend(args[2:])
        commands.append((name, args))
    return variables, commands


def keyword_arguments(args: list[str], keywords: set[str]) -> dict[str, list[str]]:
    """``NAME x SCRIPTS a b RESOURCES c`` -> {"NAME": ["x"], "SCRIPTS": ["a", "b"], "RESOURCES": ["c"]}."""
    out: dict[str, list[str]] = {}
    current = None
    for arg in args:
        if arg in keywords:
            current = out.setdefault(arg, [])
        elif current is not None:
            current.append(arg)
    return out


def repository_files(*paths: str) -> list[str]:
    """Files under ``paths`` (relative, with "/"), tracked by git or new and not ignored; no caches."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *paths],
                                cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. a source archive)
        listed = [(Path(dirpath) / name).relative_to(ROOT).as_posix()
                  for path in paths for dirpath, _, names in os.walk(ROOT / path) for name in names]
    return sorted({f for f in listed if f and (ROOT / f).is_file() and "__pycache__" not in f.split("/")
                   and not f.endswith((".pyc", ".pyo"))})


def top_level():
    return evaluate_cmake(ROOT / "CMakeLists.txt")


def _module_cmake(folder: str):
    path = ROOT / folder / "CMakeLists.txt"
    if not path.is_file():
        pytest.fail(f"{folder}/CMakeLists.txt is missing: the module is neither built nor packaged")
    variables, commands = evaluate_cmake(path)
    calls = [args for name, args in commands if name == "slicermacrobuildscriptedmodule"]
    assert len(calls) == 1, f"{folder}/CMakeLists.txt must call slicerMacroBuildScriptedModule() once"
    macro = keyword_arguments(calls[0], {"NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR"})
    return variables, macro


def shipped_module_files(folder: str) -> list[str]:
    """Files of a module folder that the package must contain, relative to the folder."""
    lib = f"{folder}Lib/"
    shipped = []
    for path in repository_files(folder):
        rel = path[len(folder) + 1:]
        if rel.startswith("Testing/"):
            continue
        if (rel.endswith(".py") or rel.startswith(lib)
                or (rel.startswith("Resources/") and Path(rel).suffix.lower() in RESOURCE_SUFFIXES)):
            shipped.append(rel)
    return shipped


# --- (a) each module's CMakeLists.txt lists exactly the files that ship ----------------------------------------

@pytest.mark.parametrize("folder", MODULE_DIRS)
def test_module_cmake_lists_every_shipped_file(folder):
    variables, macro = _module_cmake(folder)
    assert macro.get("NAME") == [folder], f"{folder}: slicerMacroBuildScriptedModule NAME must be {folder}"
    assert "WITH_GENERIC_TESTS" in macro, f"{folder}: slicerMacroBuildScriptedModule(... WITH_GENERIC_TESTS)"
    assert macro.get("SCRIPTS") == variables.get("MODULE_PYTHON_SCRIPTS"), \
        f"{folder}: SCRIPTS must be ${{MODULE_PYTHON_SCRIPTS}}"
    assert macro.get("RESOURCES", []) == variables.get("MODULE_PYTHON_RESOURCES", []), \
        f"{folder}: RESOURCES must be ${{MODULE_PYTHON_RESOURCES}}"
    scripts, resources = macro.get("SCRIPTS", []), macro.get("RESOURCES", [])
    listed = set(scripts) | set(resources)

    missing = sorted(set(shipped_module_files(folder)) - listed)
    assert not missing, f"{folder}/CMakeLists.txt does not list {missing}: they would not be packaged"
    absent = sorted(f for f in listed if not (ROOT / folder / f).is_file())
    assert not absent, f"{folder}/CMakeLists.txt lists {absent}, which do not exist"
    duplicated = sorted({f for f in scripts + resources if (scripts + resources).count(f) > 1})
    assert not duplicated, f"{folder}/CMakeLists.txt lists {duplicated} more than once"
    assert f"{folder}.py" in scripts, f"{folder}/CMakeLists.txt must list the module file {folder}.py"


@pytest.mark.parametrize("folder", MODULE_DIRS)
def test_module_scripts_and_resources_are_sorted_by_kind(folder):
    """SCRIPTS are byte-compiled (a .png there breaks the build); .py in the module folder itself are modules."""
    _, macro = _module_cmake(folder)
    not_python = [f for f in macro.get("SCRIPTS", []) if not f.endswith(".py")]
    assert not not_python, f"{folder}: {not_python} belong in MODULE_PYTHON_RESOURCES, not MODULE_PYTHON_SCRIPTS"
    python = [f for f in macro.get("RESOURCES", []) if f.endswith(".py")]
    assert not python, f"{folder}: {python} belong in MODULE_PYTHON_SCRIPTS"
    extra_modules = [f for f in macro.get("SCRIPTS", []) if "/" not in f and f != f"{folder}.py"]
    assert not extra_modules, (f"{folder}: {extra_modules} sit in the module folder itself, where Slicer loads every "
                               f".py as a module: move them into {folder}Lib/")


# --- (b) the top-level CMakeLists.txt adds every module ---------------------------------------------------------

def test_top_level_adds_every_module():
    _, commands = top_level()
    added = [args[0] for name, args in commands if name == "add_subdirectory"]
    with_cmake = sorted(p.name for p in ROOT.iterdir()
                        if p.is_dir() and not p.name.startswith(".") and (p / "CMakeLists.txt").is_file())
    assert sorted(set(with_cmake) - set(added)) == [], "folders with a CMakeLists.txt but no add_subdirectory()"
    assert sorted(set(MODULE_DIRS) - set(added)) == [], "module folders without add_subdirectory()"
    no_cmake = [d for d in added if not (ROOT / d / "CMakeLists.txt").is_file()]
    assert not no_cmake, f"add_subdirectory() of folders without a CMakeLists.txt (CMake would fail): {no_cmake}"
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "## NEXT_MODULE" in text, "keep the ## NEXT_MODULE marker (the Extension Wizard adds modules there)"
    marker = text.index("## NEXT_MODULE")
    for folder in added:
        assert text.index(f"add_subdirectory({folder})") < marker, f"add_subdirectory({folder}) after ## NEXT_MODULE"


# --- (c) the top-level install() rules ship every file of the engine and of the Slicer logic layer ----------------

def _cmake_glob(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def _install_rule(package: str):
    _, commands = top_level()
    rules = [args for name, args in commands if name == "install" and args and args[0] == "DIRECTORY"
             and any(re.fullmatch(rf"(\$\{{CMAKE_CURRENT_SOURCE_DIR\}}/)?{package}/?", a) for a in args[1:])]
    assert len(rules) == 1, f"the top-level CMakeLists.txt needs one install(DIRECTORY .../{package} ...)"
    args = rules[0]
    destination = args[args.index("DESTINATION") + 1] if "DESTINATION" in args else None
    assert destination == "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}", \
        f"{package} must be installed beside the scripted modules, not in {destination}"
    # PATTERN <glob> / REGEX <regex>, each optionally followed by EXCLUDE
    filters = []
    for i, arg in enumerate(args):
        if arg in ("PATTERN", "REGEX") and i + 1 < len(args):
            exclude = i + 2 < len(args) and args[i + 2] == "EXCLUDE"
            filters.append((arg, args[i + 1], exclude))
    return "FILES_MATCHING" in args, filters


def _matches(kind: str, expression: str, path: str) -> bool:
    """CMake's rule: a PATTERN matches a whole file or folder name, a REGEX any part of the full path."""
    if kind == "PATTERN":
        return any(_cmake_glob(part, expression) for part in path.split("/"))
    return re.search(expression, "/" + path) is not None


def installed_by(path: str, files_matching: bool, filters) -> bool:
    if any(exclude and _matches(kind, e, path) for kind, e, exclude in filters):
        return False
    if not files_matching:
        return True
    name = path.split("/")[-1]
    return any(not exclude and (_cmake_glob(name, e) if kind == "PATTERN" else re.search(e, "/" + path))
               for kind, e, exclude in filters)


@pytest.mark.parametrize("package", PACKAGES)
def test_install_rules_cover_every_package_file(package):
    files_matching, filters = _install_rule(package)
    files = repository_files(package)
    assert files, f"no files under {package}/"
    assert f"{package}/__init__.py" in files
    missed = [f for f in files if not installed_by(f, files_matching, filters)]
    assert not missed, f"the install() rule of {package} does not install {missed}"
    assert any(exclude and kind == "PATTERN" and e == "__pycache__" for kind, e, exclude in filters), \
        f"the install() rule of {package} should exclude __pycache__ folders"


def test_install_rule_matching_follows_cmake():
    """The matcher above, on the cases the rules rely on."""
    filters = [("PATTERN", "*.py", False), ("PATTERN", "*.nii.gz", False), ("PATTERN", "__pycache__", True)]
    assert installed_by("p/a.py", True, filters)
    assert installed_by("p/data/x.nii.gz", True, filters)
    assert not installed_by("p/data/x.nii", True, filters)
    assert not installed_by("p/__pycache__/a.py", True, filters)
    assert not installed_by("p/data/README.md", True, filters)


# --- (d) the Extensions Index entry agrees with the CMake metadata ----------------------------------------------

def test_extension_index_entry():
    variables, commands = top_level()
    project = next(args[0] for name, args in commands if name == "project")
    path = ROOT / f"{project}.json"
    assert path.is_file(), f"the Extensions Index entry must be named after the project: {path.name}"
    entry = json.loads(path.read_text(encoding="utf-8"))

    assert isinstance(entry, dict)
    assert {"$schema", "category", "scm_url"} <= entry.keys(), "required: $schema, category, scm_url"
    unknown = set(entry) - INDEX_SCHEMA_KEYS
    assert not unknown, f"keys the catalog schema does not allow: {unknown}"
    assert re.fullmatch(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
                        r"slicer-extension-catalog-entry-schema-v\d+\.\d+\.\d+\.json#?", entry["$schema"])
    assert isinstance(entry["category"], str) and entry["category"]
    assert isinstance(entry.get("scm_revision", ""), str)
    assert entry.get("scm_type", "git") in ("git", "local")
    assert isinstance(entry.get("build_subdirectory", "."), str)
    assert isinstance(entry.get("enabled", True), bool)
    tier = entry.get("tier", 1)
    assert isinstance(tier, int) and not isinstance(tier, bool) and 1 <= tier <= 5

    homepage = variables["EXTENSION_HOMEPAGE"]
    assert entry["scm_url"] == homepage[0], "scm_url must equal EXTENSION_HOMEPAGE"
    depends = [d for value in variables["EXTENSION_DEPENDS"] for d in re.split(r"[\s;]+", value) if d]
    depends = [] if depends == ["NA"] else depends
    assert isinstance(entry.get("build_dependencies", []), list)
    assert entry.get("build_dependencies", []) == depends, "build_dependencies must equal EXTENSION_DEPENDS"
    assert "PyTorch" in depends, "torch comes from the PyTorch extension"


def test_extension_icon_is_in_the_repository():
    variables, _ = top_level()
    homepage = variables["EXTENSION_HOMEPAGE"][0]
    m = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(\.git)?/?", homepage)
    assert m, f"EXTENSION_HOMEPAGE is not a GitHub repository: {homepage}"
    prefix = f"https://raw.githubusercontent.com/{m.group(1)}/{m.group(2)}/main/"
    icon_url = variables["EXTENSION_ICONURL"][0]
    assert icon_url.startswith(prefix), f"EXTENSION_ICONURL should be a raw URL into {prefix}"
    icon = ROOT / icon_url[len(prefix):]
    assert icon.is_file(), f"EXTENSION_ICONURL points to {icon.relative_to(ROOT)}, which does not exist"
    header = icon.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "the extension icon must be a PNG"
    assert struct.unpack(">II", header[16:24]) == (128, 128), "the extension icon must be 128 x 128"


# --- the reader itself ------------------------------------------------------------------------------------------

def test_cmake_reader(tmp_path):
    path = tmp_path / "CMakeLists.txt"
    path.write_text('set(NAME Mod) # comment\nset(DESC "a (b) # not a comment")\n'
                    "set(S\n  ${NAME}.py\n  ${NAME}Lib/x.py # trailing\n  )\nlist(APPEND S ${NAME}Lib/y.py)\n"
                    "#[[ block\nset(NAME Other) ]]\nmacro_call(NAME ${NAME} SCRIPTS ${S} FLAG)\n")
    variables, commands = evaluate_cmake(path)
    assert variables["NAME"] == ["Mod"]
    assert variables["DESC"] == ["a (b) # not a comment"]
    assert variables["S"] == ["Mod.py", "ModLib/x.py", "ModLib/y.py"]
    call = keyword_arguments(commands[-1][1], {"NAME", "SCRIPTS", "FLAG"})
    assert call == {"NAME": ["Mod"], "SCRIPTS": ["Mod.py", "ModLib/x.py", "ModLib/y.py"], "FLAG": []}
