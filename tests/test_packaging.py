"""setup.cfg lists its packages by hand; keep that list equal to the source tree."""

import configparser
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_package_list_matches_the_tree():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    found = {"tfcompress_edge"}
    for folder, _, files in os.walk(os.path.join(ROOT, "tfcompress")):
        if "__init__.py" in files and "__pycache__" not in folder:
            found.add(os.path.relpath(folder, ROOT).replace(os.sep, "."))
    assert listed == found


def test_edge_kit_is_installed_as_tfcompress_edge():
    import tfcompress_edge.runner

    assert os.path.samefile(
        os.path.dirname(tfcompress_edge.runner.__file__), os.path.join(ROOT, "export")
    )
