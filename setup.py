from setuptools import find_packages, setup

# Versions are pinned in requirements/lock.txt (scripts/setup.sh installs from it); the ranges here
# only say what the code needs, so that the package can be installed into a cluster's environment.
CORE = [
    "pyspark>=3.5,<3.6",
    "pyarrow>=10,<11",
    "pyarrow-hotfix>=0.6",  # CVE-2023-47248 on pyarrow < 14.0.1: imported by lesionspark/__init__.py
    "numpy>=1.26,<2",
    "pandas>=2.0,<2.3",
    "petastorm==0.13.1",
    "opencv-python-headless>=4.8",
    "pillow>=10",
    "PyYAML>=6",
    "scikit-learn>=1.3",
    "imbalanced-learn>=0.12",
    "tqdm>=4",
    "pydicom>=3,<4",  # DICOM archives (lesionspark/imaging/dicom.py)
    "python-gdcm>=3.0.24",  # its pixel decoders: JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000
    "boto3>=1.35.30",  # S3 roots: the conditional PUT (If-None-Match) the lease needs; pyarrow 10 has none
]
TRAIN = [
    "tensorflow-cpu==2.15.1",
    "horovod[spark]==0.28.1",  # built from source: see scripts/setup.sh for the flags
]

setup(
    name="lesionspark",
    version="0.1.0",
    description="Dermatoscopic skin-lesion classification at hospital scale on Apache Spark",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["lesionspark", "lesionspark.*"]),
    package_data={"lesionspark": ["data/ham10000/*.csv", "data/ham10000/*.md",
                                  "data/ham10000/images/*.jpg", "conf/*.yaml"]},
    install_requires=CORE,
    extras_require={"train": TRAIN, "test": ["pytest>=8", "pytest-xdist>=3.6", "moto[s3]>=5", "flask", "flask-cors"]},
    entry_points={"console_scripts": ["lesionspark=lesionspark.cli:main"]},
)
