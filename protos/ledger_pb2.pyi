from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_KIND_UNSPECIFIED: _ClassVar[EntryKind]
    ENTRY_KIND_CHARGE: _ClassVar[EntryKind]
    ENTRY_KIND_REFUSAL: _ClassVar[EntryKind]

class PrivacyUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIVACY_UNIT_UNSPECIFIED: _ClassVar[PrivacyUnit]
    PRIVACY_UNIT_RECORD: _ClassVar[PrivacyUnit]
    PRIVACY_UNIT_OWNER: _ClassVar[PrivacyUnit]

class AnchorOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANCHOR_OUTCOME_UNSPECIFIED: _ClassVar[AnchorOutcome]
    ANCHOR_OUTCOME_AGGREGATED: _ClassVar[AnchorOutcome]
    ANCHOR_OUTCOME_REFUSED: _ClassVar[AnchorOutcome]
    ANCHOR_OUTCOME_UPDATE_DROPPED: _ClassVar[AnchorOutcome]
    ANCHOR_OUTCOME_CHARGED: _ClassVar[AnchorOutcome]
ENTRY_KIND_UNSPECIFIED: EntryKind
ENTRY_KIND_CHARGE: EntryKind
ENTRY_KIND_REFUSAL: EntryKind
PRIVACY_UNIT_UNSPECIFIED: PrivacyUnit
PRIVACY_UNIT_RECORD: PrivacyUnit
PRIVACY_UNIT_OWNER: PrivacyUnit
ANCHOR_OUTCOME_UNSPECIFIED: AnchorOutcome
ANCHOR_OUTCOME_AGGREGATED: AnchorOutcome
ANCHOR_OUTCOME_REFUSED: AnchorOutcome
ANCHOR_OUTCOME_UPDATE_DROPPED: AnchorOutcome
ANCHOR_OUTCOME_CHARGED: AnchorOutcome

class PoissonSubsampledGaussian(_message.Message):
    __slots__ = ("noise_multiplier", "sample_rate", "steps")
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    noise_multiplier: float
    sample_rate: float
    steps: int
    def __init__(self, noise_multiplier: _Optional[float] = ..., sample_rate: _Optional[float] = ..., steps: _Optional[int] = ...) -> None: ...

class Gaussian(_message.Message):
    __slots__ = ("noise_multiplier",)
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    noise_multiplier: float
    def __init__(self, noise_multiplier: _Optional[float] = ...) -> None: ...

class SampledWithoutReplacementGaussian(_message.Message):
    __slots__ = ("noise_multiplier", "sample_size", "population_size", "steps")
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    POPULATION_SIZE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    noise_multiplier: float
    sample_size: int
    population_size: int
    steps: int
    def __init__(self, noise_multiplier: _Optional[float] = ..., sample_size: _Optional[int] = ..., population_size: _Optional[int] = ..., steps: _Optional[int] = ...) -> None: ...

class NonPrivateRelease(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: int
    def __init__(self, steps: _Optional[int] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("sequence", "previous_hash", "run_id", "round", "owner_id", "kind", "poisson_subsampled_gaussian", "gaussian", "sampled_without_replacement_gaussian", "non_private_release", "clipping_norm", "privacy_unit", "delta", "accountant", "cumulative_epsilon", "epsilon_budget", "purpose", "timestamp_unix_nanos", "update_hash", "refusal_reason", "federation")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_HASH_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    POISSON_SUBSAMPLED_GAUSSIAN_FIELD_NUMBER: _ClassVar[int]
    GAUSSIAN_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_WITHOUT_REPLACEMENT_GAUSSIAN_FIELD_NUMBER: _ClassVar[int]
    NON_PRIVATE_RELEASE_FIELD_NUMBER: _ClassVar[int]
    CLIPPING_NORM_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_UNIT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_EPSILON_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_HASH_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_REASON_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    previous_hash: bytes
    run_id: str
    round: int
    owner_id: str
    kind: EntryKind
    poisson_subsampled_gaussian: PoissonSubsampledGaussian
    gaussian: Gaussian
    sampled_without_replacement_gaussian: SampledWithoutReplacementGaussian
    non_private_release: NonPrivateRelease
    clipping_norm: float
    privacy_unit: PrivacyUnit
    delta: float
    accountant: str
    cumulative_epsilon: float
    epsilon_budget: float
    purpose: str
    timestamp_unix_nanos: int
    update_hash: bytes
    refusal_reason: str
    federation: str
    def __init__(self, sequence: _Optional[int] = ..., previous_hash: _Optional[bytes] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., owner_id: _Optional[str] = ..., kind: _Optional[_Union[EntryKind, str]] = ..., poisson_subsampled_gaussian: _Optional[_Union[PoissonSubsampledGaussian, _Mapping]] = ..., gaussian: _Optional[_Union[Gaussian, _Mapping]] = ..., sampled_without_replacement_gaussian: _Optional[_Union[SampledWithoutReplacementGaussian, _Mapping]] = ..., non_private_release: _Optional[_Union[NonPrivateRelease, _Mapping]] = ..., clipping_norm: _Optional[float] = ..., privacy_unit: _Optional[_Union[PrivacyUnit, str]] = ..., delta: _Optional[float] = ..., accountant: _Optional[str] = ..., cumulative_epsilon: _Optional[float] = ..., epsilon_budget: _Optional[float] = ..., purpose: _Optional[str] = ..., timestamp_unix_nanos: _Optional[int] = ..., update_hash: _Optional[bytes] = ..., refusal_reason: _Optional[str] = ..., federation: _Optional[str] = ...) -> None: ...

class SignedEntry(_message.Message):
    __slots__ = ("entry", "signature", "key_fingerprint")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    entry: bytes
    signature: bytes
    key_fingerprint: str
    def __init__(self, entry: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_fingerprint: _Optional[str] = ...) -> None: ...

class AnchorEntry(_message.Message):
    __slots__ = ("sequence", "previous_hash", "experiment_id", "round", "owner_id", "owner_sequence", "owner_entry_hash", "owner_position", "outcome", "timestamp_unix_nanos")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_HASH_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OWNER_ENTRY_HASH_FIELD_NUMBER: _ClassVar[int]
    OWNER_POSITION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    previous_hash: bytes
    experiment_id: str
    round: int
    owner_id: str
    owner_sequence: int
    owner_entry_hash: bytes
    owner_position: int
    outcome: AnchorOutcome
    timestamp_unix_nanos: int
    def __init__(self, sequence: _Optional[int] = ..., previous_hash: _Optional[bytes] = ..., experiment_id: _Optional[str] = ..., round: _Optional[int] = ..., owner_id: _Optional[str] = ..., owner_sequence: _Optional[int] = ..., owner_entry_hash: _Optional[bytes] = ..., owner_position: _Optional[int] = ..., outcome: _Optional[_Union[AnchorOutcome, str]] = ..., timestamp_unix_nanos: _Optional[int] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ("owner_id", "accountant", "privacy_unit")
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_UNIT_FIELD_NUMBER: _ClassVar[int]
    owner_id: str
    accountant: str
    privacy_unit: PrivacyUnit
    def __init__(self, owner_id: _Optional[str] = ..., accountant: _Optional[str] = ..., privacy_unit: _Optional[_Union[PrivacyUnit, str]] = ...) -> None: ...

class GetBudgetResponse(_message.Message):
    __slots__ = ("owner_id", "accountant", "delta", "epsilon_spent", "epsilon_budget", "epsilon_remaining", "charges", "refusals", "head_sequence", "head_hash", "privacy_unit")
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REMAINING_FIELD_NUMBER: _ClassVar[int]
    CHARGES_FIELD_NUMBER: _ClassVar[int]
    REFUSALS_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_UNIT_FIELD_NUMBER: _ClassVar[int]
    owner_id: str
    accountant: str
    delta: float
    epsilon_spent: float
    epsilon_budget: float
    epsilon_remaining: float
    charges: int
    refusals: int
    head_sequence: int
    head_hash: bytes
    privacy_unit: PrivacyUnit
    def __init__(self, owner_id: _Optional[str] = ..., accountant: _Optional[str] = ..., delta: _Optional[float] = ..., epsilon_spent: _Optional[float] = ..., epsilon_budget: _Optional[float] = ..., epsilon_remaining: _Optional[float] = ..., charges: _Optional[int] = ..., refusals: _Optional[int] = ..., head_sequence: _Optional[int] = ..., head_hash: _Optional[bytes] = ..., privacy_unit: _Optional[_Union[PrivacyUnit, str]] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("owner_id", "start_sequence", "limit")
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    START_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    owner_id: str
    start_sequence: int
    limit: int
    def __init__(self, owner_id: _Optional[str] = ..., start_sequence: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("epsilon_check",)
    EPSILON_CHECK_FIELD_NUMBER: _ClassVar[int]
    epsilon_check: str
    def __init__(self, epsilon_check: _Optional[str] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("ok", "entries_checked", "first_bad_owner_id", "first_bad_sequence", "reason", "keys_independently_supplied", "key_fingerprints", "notes")
    class KeyFingerprintsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OK_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KEYS_INDEPENDENTLY_SUPPLIED_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINTS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    entries_checked: int
    first_bad_owner_id: str
    first_bad_sequence: int
    reason: str
    keys_independently_supplied: bool
    key_fingerprints: _containers.ScalarMap[str, str]
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ok: _Optional[bool] = ..., entries_checked: _Optional[int] = ..., first_bad_owner_id: _Optional[str] = ..., first_bad_sequence: _Optional[int] = ..., reason: _Optional[str] = ..., keys_independently_supplied: _Optional[bool] = ..., key_fingerprints: _Optional[_Mapping[str, str]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...
