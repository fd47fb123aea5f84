"""Keep `mindspeed_mm.osp` importable when another regular `mindspeed_mm` package comes first on sys.path.

Ascend's MindSpeed-MM is a regular package named `mindspeed_mm`; run from its source checkout, Python stops at
that package and would never look for our `osp` subpackage. `mindspeed_mm_osp.pth` (installed next to this
module) imports it at interpreter start-up; the finder sits at the end of `sys.meta_path`, so it only answers
`mindspeed_mm.osp` when the normal search through `mindspeed_mm.__path__` found nothing.
"""
import importlib.util
import os
import sys

_OSP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mindspeed_mm", "osp")


class OspFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != "mindspeed_mm.osp":
            return None
        return importlib.util.spec_from_file_location(
            fullname, os.path.join(_OSP_DIR, "__init__.py"), submodule_search_locations=[_OSP_DIR])


def install() -> None:
    if os.path.isdir(_OSP_DIR) and OspFinder not in sys.meta_path:
        sys.meta_path.append(OspFinder)


install()
