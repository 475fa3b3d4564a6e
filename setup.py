"""Build the compiled kernels in ``serpytor/_core``.

Every ``.pyx`` under ``serpytor/_core/`` becomes an extension module; the metadata lives
in ``pyproject.toml``.
"""

from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

CORE = Path("serpytor") / "_core"


def core_extensions() -> list[Extension]:
    return [
        Extension(
            f"serpytor._core.{pyx.stem}",
            [str(pyx)],
            depends=[str(header) for header in sorted(CORE.glob("*.h"))],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=["-O3"],
        )
        for pyx in sorted(CORE.glob("*.pyx"))
    ]


setup(
    ext_modules=cythonize(
        core_extensions(),
        compiler_directives={"language_level": 3, "embedsignature": True},
    ),
)
