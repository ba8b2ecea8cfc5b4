"""TAD inside the user's own upstream checkout (MTT, FTD, DATM, ATT): ``tad wrap`` and its pieces.

:func:`run_wrapped` runs an unmodified upstream buffer or distill script with TAD's hooks installed
(:mod:`.launch`); :class:`TADEpoch` is the hooked ``epoch`` a buffer script trains with (:mod:`.epoch`);
:class:`TrustState` is what the buffer run leaves for the distill run (:mod:`.state`). The six-line
alternative for users who edit their script is in docs/wrapping.md.
"""

from .epoch import HookCriterion, TADEpoch, class_chunk_anchors
from .labels import Relabelled, corrupt_labels, dataset_labels
from .launch import WrapConfig, WrapResult, run_wrapped
from .scripts import METHODS, SCRIPTS, UpstreamScript, resolve_script
from .state import TrustState

__all__ = ["run_wrapped", "WrapConfig", "WrapResult", "TADEpoch", "HookCriterion", "class_chunk_anchors",
           "TrustState", "Relabelled", "corrupt_labels", "dataset_labels", "METHODS", "SCRIPTS", "UpstreamScript",
           "resolve_script"]
