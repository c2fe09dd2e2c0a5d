"""The domain values, the column declarations they are loaded through, and the
persistence room's import boundary."""

from __future__ import annotations

import ast
import json
import pathlib
import sys

import attrs
from twisted.trial import unittest

from viworks.backend import auditchain, model
from viworks.backend.api import views
from viworks.backend.model import Command, Job, NewCommand
from viworks.backend.store import columns
from viworks.backend.store.columns import INT, REAL, Column, Table
from viworks.backend.store.commands import COMMANDS
from viworks.backend.store.jobs import JOBS
from viworks.backend.store.tokens import TOKENS

STORE = pathlib.Path(columns.__file__).parent

COMMAND = Command(
    command_id="c1",
    agent_id="gw-1",
    verb="ping",
    args={"count": 1},
    status="queued",
    timeout=30.0,
    exit_code=None,
    result=None,
    stdout=None,
    stderr=None,
    error=None,
    stdout_truncated=False,
    stderr_truncated=False,
    created_at=10.0,
    dispatched_at=None,
    started_at=None,
    finished_at=None,
    expires_at=70.0,
    cancel_requested_at=None,
)


@attrs.frozen
class _Pair:
    name: str
    value: float


class ModelTests(unittest.TestCase):
    def test_values_are_frozen_and_evolve(self) -> None:
        """A domain value cannot be changed in place; attrs.evolve makes a changed copy."""
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            COMMAND.status = "running"  # type: ignore[misc]
        running = attrs.evolve(COMMAND, status="running", started_at=11.0)
        self.assertEqual((COMMAND.status, running.status), ("queued", "running"))
        self.assertEqual(running.started_at, 11.0)

    def test_new_command_has_only_what_a_creation_takes(self) -> None:
        """A command to create has no status and no field that only its lifecycle sets."""
        fields = {f.name for f in attrs.fields(NewCommand)}
        self.assertNotIn("status", fields)
        self.assertNotIn("cancel_requested_at", fields)
        new = NewCommand(command_id="c", agent_id="a", verb="v", created_at=1.0)
        self.assertEqual((new.args, new.timeout, new.expires_at), ({}, None, None))
        with self.assertRaises(TypeError):
            NewCommand("c", "a", "v", 1.0)  # type: ignore[misc]  # keywords only

    def test_api_fields_leave_hidden_ones_out(self) -> None:
        """The API's view of a command is every field but cancel_requested_at, in order;
        of a job every field but has_secrets."""
        names = [f.name for f in attrs.fields(Command)]
        self.assertEqual(
            model.api_fields(Command), tuple(n for n in names if n != "cancel_requested_at")
        )
        self.assertNotIn("has_secrets", model.api_fields(Job))
        self.assertEqual(list(views.command_json(COMMAND)), list(model.api_fields(Command)))

    def test_one_definition_of_statuses_and_roles(self) -> None:
        """Job statuses and token roles are model's, wherever they are used."""
        from viworks.backend import authz, jobs

        self.assertIs(authz.ROLES, model.TOKEN_ROLES)
        self.assertEqual(authz.ROLES, ("viewer", "operator", "admin"))
        self.assertEqual(
            {jobs.RUNNING, jobs.PAUSED, jobs.STOPPED, jobs.COMPLETED, jobs.CANCELLED},
            model.JOB_STATUSES,
        )


class ColumnTests(unittest.TestCase):
    def test_declaration_must_match_the_model(self) -> None:
        """Columns that are not the model's fields, in its order, are refused at import."""
        with self.assertRaises(TypeError):
            Table("pairs", _Pair, [Column("value", REAL), Column("name")])
        with self.assertRaises(TypeError):
            Table("pairs", _Pair, [Column("name")])
        with self.assertRaises(TypeError):
            Table("pairs", _Pair, [Column("name"), Column("value", REAL), Column("extra")])

    def test_select_list_and_sets_derive_from_the_declaration(self) -> None:
        """The SELECT list follows the declaration; writable leaves internal and computed
        columns out; mutable is what an update may set."""
        self.assertTrue(COMMANDS.select.startswith("command_id, agent_id, verb, args, status"))
        self.assertNotIn("cancel_requested_at", COMMANDS.writable)
        self.assertNotIn("status", COMMANDS.mutable)
        self.assertNotIn("command_id", COMMANDS.mutable)
        self.assertIn("exit_code", COMMANDS.mutable)
        self.assertEqual(JOBS.mutable, {"status", "canary_passed", "finished_at", "error"})
        with self.assertRaises(ValueError):
            COMMANDS.check_update(["cancel_requested_at"])
        with self.assertRaises(ValueError):
            JOBS.check_update(["verb"])

    def test_codecs_round_trip(self) -> None:
        """Stored values come back as Python ones: JSON decoded, 0/1 as booleans, integral
        REALs (SQLite's RETURNING) as floats, NULL as None."""
        stored = COMMANDS.dump_value(
            attrs.evolve(COMMAND, result={"b": 1, "a": [1]}, stdout_truncated=True)
        )
        self.assertEqual(stored["args"], '{"count":1}')
        self.assertEqual(stored["result"], '{"a":[1],"b":1}')
        self.assertEqual((stored["stdout_truncated"], stored["stderr_truncated"]), (1, 0))
        self.assertIsNone(stored["error"])
        names = [c.name for c in COMMANDS.columns]
        row = [stored.get(name) for name in names]
        row[names.index("created_at")] = 10  # an int, as SQLite's RETURNING gives it
        loaded = COMMANDS.load(row)
        self.assertIs(type(loaded.created_at), float)
        self.assertEqual(
            loaded, attrs.evolve(COMMAND, result={"b": 1, "a": [1]}, stdout_truncated=True)
        )
        self.assertIs(loaded.stdout_truncated, True)

    def test_view_reads_a_subset(self) -> None:
        """A view reads some of a table's columns into another model, with their codecs."""

        @attrs.frozen
        class Named:
            name: str
            verbs: list[str] | None

        names = TOKENS.view(Named)
        self.assertEqual(names.select, "name, verbs")
        self.assertEqual(names.load(("ci", json.dumps(["ping"]))), Named("ci", ["ping"]))
        with self.assertRaises(TypeError):
            COMMANDS.view(Named)  # commands have no verbs column

    def test_computed_and_aliased_columns(self) -> None:
        """A computed column is selected AS its name and never written; an alias prefixes
        the others."""
        table = Table(
            "pairs", _Pair, [Column("name"), Column("value", INT, expr="COUNT(*)")], alias="p"
        )
        self.assertEqual(table.select, "p.name, COUNT(*) AS value")
        self.assertEqual(table.writable, ("name",))
        self.assertEqual(table.load(("x", 3)), _Pair("x", 3))


class BoundaryTests(unittest.TestCase):
    def test_store_imports_no_domain_module(self) -> None:
        """viworks/backend/store imports nothing of the backend but its value types
        (model) and the audit chain's pure hashing (auditchain)."""
        allowed = {"viworks.backend.model", "viworks.backend.auditchain"}
        for path in sorted(STORE.glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                module = names[0]
                if module == "viworks.backend":
                    module = names[1]  # from viworks.backend import x
                if module.startswith("viworks.backend.") and not module.startswith(
                    "viworks.backend.store"
                ):
                    self.assertIn(module, allowed, f"{path.name} imports {module}")

    def test_model_and_chain_are_pure(self) -> None:
        """model imports only attrs and the standard library; auditchain adds only model and
        the pure redaction rules."""
        chain_allowed = {"viworks.backend.model", "viworks.redaction"}
        for module, allowed in ((model, {"attrs"}), (auditchain, chain_allowed)):
            tree = ast.parse(pathlib.Path(module.__file__).read_text())
            imported = {
                node.module if isinstance(node, ast.ImportFrom) else alias.name
                for node in ast.walk(tree)
                if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in node.names
            }
            others = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names}
            self.assertLessEqual(others, allowed, module.__name__)
