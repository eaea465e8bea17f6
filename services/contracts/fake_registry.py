"""In-memory stand-in for ``SchemaRegistryClient`` (unit tests only; no network).

Implements the calls casestream makes with the same return types and
``SchemaRegistryError`` status codes as the Confluent API: schema ids are global and reused for
identical schema text, versions are per subject, registration enforces the subject's
compatibility level with the local checker of ``services.contracts.compat``.
"""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry import RegisteredSchema, Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from services.contracts import compat

_LEVELS = {
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
}


class InMemorySchemaRegistry:
    def __init__(self, *, global_level: str = "BACKWARD", config_requires_subject: bool = False):
        """``config_requires_subject=True`` mimics registries that answer 404 when setting the
        compatibility of a subject that has no versions yet."""
        self.global_level = global_level
        self.config_requires_subject = config_requires_subject
        self._ids: dict[str, int] = {}  # canonical schema JSON -> id
        self._texts: dict[int, str] = {}
        self._subjects: dict[str, list[int]] = {}  # subject -> schema id per version (1-based)
        self._levels: dict[str, str] = {}
        self.calls: list[tuple[str, str | None]] = []

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _key(text: str) -> str:
        # Registries match schemas semantically, not byte for byte (whitespace, key order).
        try:
            return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
        except ValueError:
            raise SchemaRegistryError(422, 42201, "Invalid schema") from None

    def _versions(self, subject: str) -> list[int]:
        if subject not in self._subjects:
            raise SchemaRegistryError(404, 40401, f"Subject '{subject}' not found.")
        return self._subjects[subject]

    def _registered(self, subject: str, version: int) -> RegisteredSchema:
        ids = self._versions(subject)
        if not 1 <= version <= len(ids):
            raise SchemaRegistryError(404, 40402, f"Version {version} not found.")
        schema_id = ids[version - 1]
        return RegisteredSchema(
            subject=subject,
            version=version,
            schema_id=schema_id,
            guid=None,
            schema=Schema(self._texts[schema_id], "AVRO"),
        )

    def _problems(self, subject: str, schema_str: str, level: str) -> list[str]:
        olds = [self._texts[i] for i in self._subjects.get(subject, [])]
        if not olds or level == "NONE":
            return []
        if not level.endswith("_TRANSITIVE"):
            olds = olds[-1:]
        problems: list[str] = []
        for old in olds:
            if level.startswith(("BACKWARD", "FULL")):
                problems += compat.check_backward(schema_str, old)
            if level.startswith(("FORWARD", "FULL")):
                problems += compat.check_forward(schema_str, old)
        return problems

    # ------------------------------------------------------------------ client API

    def register_schema(
        self, subject_name: str, schema: Schema, normalize_schemas: bool = False
    ) -> int:
        self.calls.append(("register_schema", subject_name))
        text = schema.schema_str
        ids = self._subjects.get(subject_name, [])
        existing = self._ids.get(self._key(text))
        if existing is not None and existing in ids:
            return existing
        problems = self._problems(subject_name, text, self.get_compatibility(subject_name))
        if problems:
            raise SchemaRegistryError(
                409,
                409,
                "Schema being registered is incompatible with an earlier schema: "
                + "; ".join(problems),
            )
        if existing is None:
            existing = len(self._texts) + 1
            self._ids[self._key(text)] = existing
            self._texts[existing] = text
        self._subjects.setdefault(subject_name, []).append(existing)
        return existing

    def lookup_schema(
        self, subject_name: str, schema: Schema, *args: Any, **kwargs: Any
    ) -> RegisteredSchema:
        self.calls.append(("lookup_schema", subject_name))
        ids = self._versions(subject_name)
        schema_id = self._ids.get(self._key(schema.schema_str))
        if schema_id is None or schema_id not in ids:
            raise SchemaRegistryError(404, 40403, "Schema not found")
        return self._registered(subject_name, ids.index(schema_id) + 1)

    def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Schema:
        self.calls.append(("get_schema", str(schema_id)))
        if schema_id not in self._texts:
            raise SchemaRegistryError(404, 40403, f"Schema {schema_id} not found")
        return Schema(self._texts[schema_id], "AVRO")

    def get_subjects(self) -> list[str]:
        return sorted(self._subjects)

    def get_versions(self, subject_name: str, *args: Any, **kwargs: Any) -> list[int]:
        return list(range(1, len(self._versions(subject_name)) + 1))

    def get_version(
        self, subject_name: str, version: Any = "latest", *args: Any, **kwargs: Any
    ) -> RegisteredSchema:
        if version == "latest":
            version = len(self._versions(subject_name))
        return self._registered(subject_name, int(version))

    def get_latest_version(self, subject_name: str, *args: Any, **kwargs: Any) -> RegisteredSchema:
        return self.get_version(subject_name, "latest")

    def set_compatibility(self, subject_name: str | None = None, level: str | None = None) -> str:
        self.calls.append(("set_compatibility", subject_name))
        if level not in _LEVELS:
            raise SchemaRegistryError(422, 42203, f"Invalid compatibility level {level!r}")
        if subject_name is None:
            self.global_level = level
        else:
            if self.config_requires_subject and subject_name not in self._subjects:
                raise SchemaRegistryError(404, 40401, f"Subject '{subject_name}' not found.")
            self._levels[subject_name] = level
        return level

    def get_compatibility(self, subject_name: str | None = None) -> str:
        if subject_name is None:
            return self.global_level
        return self._levels.get(subject_name, self.global_level)

    # Calls made by confluent_kafka's own AvroSerializer/AvroDeserializer (2.16):

    def get_associations_by_resource_name(self, *args: Any, **kwargs: Any) -> list:
        # Like registries without the associations API (Apicurio ccompat): 404, so the
        # serializer falls back to TopicNameStrategy.
        raise SchemaRegistryError(404, 404, "associations API not supported")

    def config(self) -> dict:
        return {}

    def close(self) -> None:
        pass

    def test_compatibility(
        self,
        subject_name: str,
        schema: Schema,
        version: Any = "latest",
        normalize: bool = False,
        verbose: bool = False,
    ) -> bool:
        ids = self._versions(subject_name)
        if version == "latest":
            version = len(ids)
        old = self._registered(subject_name, int(version)).schema.schema_str
        level = self.get_compatibility(subject_name)
        if level == "NONE":
            return True
        problems = []
        if level.startswith(("BACKWARD", "FULL")):
            problems += compat.check_backward(schema.schema_str, old)
        if level.startswith(("FORWARD", "FULL")):
            problems += compat.check_forward(schema.schema_str, old)
        return not problems
