"""Type stubs of the pretext package (see __init__.py and docs/python.md)."""

import os
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

PathLike = Union[str, "os.PathLike[str]"]
Setting = Union[bool, int, float, str, Sequence[Union[bool, int, float, str]]]
RunLike = Union["Run", PathLike]

class PretextError(Exception): ...
class UsageError(PretextError): ...
class ConfigError(PretextError): ...
class DataError(PretextError): ...
class IoError(PretextError): ...
class CheckpointError(PretextError): ...
class TrainingError(PretextError): ...

torch: ModuleType

class Result(Dict[str, Any]):
    path: Path
    def __init__(self, data: Mapping[str, Any], path: PathLike) -> None: ...

class Run:
    path: Path
    last: Optional[Dict[str, Any]]
    def __init__(self, path: PathLike, summary: Optional[Dict[str, Any]] = ...) -> None: ...
    def __fspath__(self) -> str: ...
    @property
    def summary(self) -> Optional[Dict[str, Any]]: ...
    @property
    def info(self) -> Optional[Dict[str, Any]]: ...
    @property
    def completed(self) -> bool: ...
    @property
    def kind(self) -> str: ...
    def resume(
        self, *, stop_after: Optional[int] = ..., device: str = ..., progress: bool = ...
    ) -> Run: ...
    def transfer(self, **kwargs: Any) -> Result: ...
    def embed(self, images: Any = ..., **kwargs: Any) -> npt.NDArray[np.float32]: ...
    def export(self, **kwargs: Any) -> Dict[str, Any]: ...

def tasks() -> List[Dict[str, str]]: ...
def pretrain(
    task: Optional[str] = ...,
    data: Optional[str] = ...,
    out: Optional[PathLike] = ...,
    *,
    config: Optional[PathLike] = ...,
    tokenizer: Optional[PathLike] = ...,
    device: str = ...,
    skip_bad: bool = ...,
    stop_after: Optional[int] = ...,
    progress: bool = ...,
    settings: Optional[Mapping[str, Setting]] = ...,
    **kwargs: Setting,
) -> Run: ...
def resume(
    run: RunLike, *, stop_after: Optional[int] = ..., device: str = ..., progress: bool = ...
) -> Run: ...
def transfer(
    source: RunLike,
    data: Optional[str] = ...,
    *,
    protocol: str = ...,
    labels_per_class: Union[int, str] = ...,
    out: Optional[PathLike] = ...,
    config: Optional[PathLike] = ...,
    device: str = ...,
    progress: bool = ...,
    settings: Optional[Mapping[str, Setting]] = ...,
    **kwargs: Setting,
) -> Result: ...
def embed(
    run: RunLike,
    images: Union[npt.NDArray[np.uint8], npt.NDArray[np.float32], Sequence[PathLike], Sequence[str], None] = ...,
    *,
    data: Optional[str] = ...,
    out: Optional[PathLike] = ...,
    stage: Optional[int] = ...,
    batch_size: Optional[int] = ...,
    skip_bad: bool = ...,
    device: str = ...,
    progress: bool = ...,
) -> npt.NDArray[np.float32]: ...
def export(run: RunLike, format: str, out: PathLike) -> Dict[str, Any]: ...
def compare(
    data: str,
    *,
    out: PathLike,
    tasks: Union[str, Sequence[str], None] = ...,
    labels_per_class: Union[str, int, Sequence[Union[int, str]], None] = ...,
    protocols: Union[str, Sequence[str]] = ...,
    budget: int = ...,
    minutes: float = ...,
    seeds: int = ...,
    stages: Union[str, Sequence[int]] = ...,
    transfer_settings: Optional[Mapping[str, Setting]] = ...,
    device: str = ...,
    progress: bool = ...,
    settings: Optional[Mapping[str, Setting]] = ...,
    **kwargs: Setting,
) -> Dict[str, Any]: ...
