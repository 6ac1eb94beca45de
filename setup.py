"""Contrastive Correspondence: learning dense features for semantic correspondence."""

from setuptools import find_packages, setup

setup(
    name="contrastive-correspondence",
    version="0.1.0",
    description=(
        "Re-implementation of 'Learning Contrastive Representation for Semantic Correspondence' "
        "(Xiao et al., IJCV 2022): MoCo + pixel-level cycle training, SCOT-style evaluation."
    ),
    python_requires=">=3.9",
    packages=find_packages(include=["configs", "data", "data.*", "models", "models.*", "training",
                                    "training.*", "validation_and_test", "validation_and_test.*",
                                    "experiments"]),
    package_data={"configs": ["*.yaml", "eval/*.yaml", "train/*.yaml"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.24",
        "scipy>=1.10",
        "pillow>=9.0",
        "scikit-image>=0.21",
        "pandas>=1.5",
        "requests>=2.28",
        "pyyaml>=6.0",
        "tensorboard>=2.12",
        "tqdm>=4.64",
        "matplotlib>=3.6",
        "timm>=1.0.3",
    ],
    extras_require={
        "test": ["pytest>=7.0", "ruff>=0.4", "pot>=0.9"],
        "download": ["gdown>=4.7"],
    },
)
