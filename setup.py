"""Packaging for ignore_attn, driven by settings.ini (nbdev 2 layout).

Runtime: `pip install .`; experiments, report and book: `pip install ".[experiments]"`;
NTU RGB+D videos: `pip install ".[ntu]"`; timm's ResNets with our blocks: `pip install ".[timm]"`;
TensorBoard logging: `pip install ".[tensorboard]"`; development and tests: `pip install -e ".[dev]"`
(includes the experiments extra, the video decoder, timm and tensorboard).
"""
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read(Path(__file__).parent / "settings.ini")
cfg = cfg["DEFAULT"]


def reqs(key):
    return cfg.get(key, "").split()


licenses = {"apache2": "Apache-2.0"}  # SPDX identifiers
experiments = reqs("experiments_requirements")

setuptools.setup(
    name=cfg["repo"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=licenses[cfg["license"]],
    url=cfg["git_url"],
    keywords=cfg["keywords"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Natural Language :: English",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    # ignore_attn/assets holds data files (the paper's numbers, the NTU exclusion list): a data-only package
    packages=setuptools.find_namespace_packages(include=[cfg["lib_name"], cfg["lib_name"] + ".*"]),
    include_package_data=True,
    package_data={cfg["lib_name"] + ".assets": ["*"]},
    python_requires=">=" + cfg["min_python"],
    install_requires=reqs("requirements"),
    extras_require={"experiments": experiments, "ntu": reqs("ntu_requirements"), "timm": reqs("timm_requirements"),
                    "tensorboard": reqs("tensorboard_requirements"), "dev": experiments + reqs("dev_requirements")},
    entry_points={
        "console_scripts": cfg["console_scripts"].split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
