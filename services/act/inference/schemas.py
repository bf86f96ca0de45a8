"""Label schemas known to a service, so that requests may name a schema by id.

A request carries either a whole `LabelSchema` or only its `schema_id` (and optionally its
version); the second form is looked up here. Known schemas are the bundled ones
(`act-moderation`, `sklearn-digits-5shot-seed0`) and every `*.json` file in a directory
(`ACT_SCHEMAS_DIR`), each a LabelSchema in JSON.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from act.inference.errors import InvalidInput, UnknownSchema
from act.inference.types import LabelSchema


class SchemaRegistry:
    """Schemas by id; the latest version unless a version is asked for."""

    def __init__(self, schemas: list[LabelSchema] | None = None) -> None:
        self._schemas: dict[tuple[str, int], LabelSchema] = {}
        for schema in schemas or []:
            self.add(schema)

    @classmethod
    def with_defaults(cls, directory: str | Path | None = None) -> SchemaRegistry:
        """The bundled schemas plus those in `directory` (ValueError naming a bad file)."""
        from act.data import digits_schema, text_schema

        registry = cls([text_schema()])
        try:
            registry.add(digits_schema())
        except ImportError:  # the digits need scikit-learn, which slim images leave out
            pass
        if directory is not None:
            registry.load_directory(directory)
        return registry

    def add(self, schema: LabelSchema) -> None:
        self._schemas[(schema.schema_id, schema.version)] = schema

    def load_directory(self, directory: str | Path) -> None:
        path = Path(directory)
        if not path.is_dir():
            raise ValueError(f"schemas directory {path} does not exist")
        for file in sorted(path.glob("*.json")):
            try:
                self.add(LabelSchema.model_validate_json(file.read_text()))
            except ValidationError as exc:
                raise ValueError(f"{file}: not a valid label schema: {exc}") from None

    def get(self, schema_id: str, version: int = 0) -> LabelSchema:
        """The schema with this id (and version, when not 0); UnknownSchema otherwise."""
        versions = sorted(v for (sid, v) in self._schemas if sid == schema_id)
        if not schema_id:
            raise InvalidInput("the schema has neither labels nor a schema_id")
        if not versions:
            known = sorted({sid for sid, _ in self._schemas})
            raise UnknownSchema(f"unknown label schema {schema_id!r}; known schemas: {known}")
        if version and version not in versions:
            raise UnknownSchema(
                f"label schema {schema_id!r} has no version {version}; known: {versions}"
            )
        return self._schemas[(schema_id, version or versions[-1])]
