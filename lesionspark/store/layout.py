"""Every path under a storage root, in one place (driver, executors and Horovod ranks): what
docs/contracts.md lays out. ``dataset`` and ``balanced`` name what is published (``AtomicDir``'s
target); the paths inside a dataset are where readers find them (``publishing.resolve``: on object
stores, inside the published version)."""
from __future__ import annotations

from .publishing import resolve
from .storage import join, normalize_uri


class Layout:
    def __init__(self, root: str):
        self.root = normalize_uri(root)

    # datasets: datasets/<name>/{train,val,test,rejects,manifest.json}, balanced/<name>/<method>/
    def datasets(self) -> str:
        return join(self.root, "datasets")

    def dataset(self, name: str) -> str:
        return join(self.root, "datasets", name)

    def split(self, name: str, split: str) -> str:
        return join(resolve(self.dataset(name)), split)

    def rejects(self, name: str) -> str:
        return join(resolve(self.dataset(name)), "rejects")

    def manifest(self, name: str) -> str:
        return join(resolve(self.dataset(name)), "manifest.json")

    def balanced(self, name: str, method: str) -> str:
        return join(self.root, "balanced", name, method)

    # models: models/<name>/<version>/ and models/<name>/latest; training runs: runs/<run_id>/
    def all_models(self) -> str:
        return join(self.root, "models")

    def models(self, name: str) -> str:
        return join(self.root, "models", name)

    def model(self, name: str, version: str) -> str:
        return join(self.root, "models", name, version)

    def latest(self, name: str) -> str:
        return join(self.root, "models", name, "latest")

    def run(self, run_id: str) -> str:
        return join(self.root, "runs", run_id)

    # results: tables/<table>/, tables/_staging/<run_id>/, tables/_lease/, reports/, explanations/
    def tables(self) -> str:
        return join(self.root, "tables")

    def table(self, name: str) -> str:
        return join(self.root, "tables", name)

    def staging(self, run_id: str | None = None) -> str:
        return join(self.root, "tables", "_staging", *([run_id] if run_id else []))

    def lease(self) -> str:
        return join(self.root, "tables", "_lease")

    def report(self, name: str, version: str) -> str:
        return join(self.root, "reports", name, version)

    def all_explanations(self) -> str:
        return join(self.root, "explanations")

    def explanations(self, name: str, version: str) -> str:
        return join(self.root, "explanations", name, version)

    # DICOM results for the PACS: dicom_results/<model>/<version>/<uid>.dcm (score.dicom_results)
    def dicom_results(self, name: str, version: str) -> str:
        return join(self.root, "dicom_results", name, version)
