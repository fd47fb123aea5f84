"""Build the torch_npu binding: `python setup.py build_ext --inplace` (needs torch_npu, CANN, the installed op
package and pytorch_npu_helper.hpp from the CANN samples next to this file). Produces osp_ascendc_torch*.so;
point OSP_ASCENDC_TORCH_LIB at it."""
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension
from torch_npu.utils.cpp_extension import NpuExtension

here = os.path.dirname(os.path.abspath(__file__))
setup(
    name="osp_ascendc_torch",
    ext_modules=[NpuExtension("osp_ascendc_torch", [os.path.join(here, "skiparse_torch_npu.cpp")],
                              extra_compile_args=["-I" + here])],
    cmdclass={"build_ext": BuildExtension},
)
