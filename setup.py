"""Packages are found, not listed: the root folders passes/ and kernels/ install as attnopt.passes and
attnopt.kernels, and a new variant's folder under kernels/ ships without touching any list."""

from setuptools import find_packages, setup


def under(folder: str, package: str) -> list[str]:
    return [package] + [f"{package}.{sub}" for sub in find_packages(folder)]


setup(packages=under("attnopt", "attnopt") + under("passes", "attnopt.passes") + under("kernels", "attnopt.kernels"))
