"""Every procedural family, by name. Add a family: write its class, list it in FAMILY_CLASSES."""

from __future__ import annotations

from taskforge.forge.base import Family
from taskforge.forge.families.archives import ArchiveBackup, ArchiveRestore
from taskforge.forge.families.build import ComposeConfigEdit, MakefileBuild, PackagingMetadata
from taskforge.forge.families.composite import RestoreAndReport, RestoreAndShip, TidyAndVerify
from taskforge.forge.families.config import CronSchedule, EnvMerge, LogrotateConfig, SystemdUnit
from taskforge.forge.families.diagnosis import ConfigRejected, CronJobNeverRuns, FailingTestData, ReportToolFails
from taskforge.forge.families.files import DiskUsageReport, PermissionAudit, PermissionsFix, StaleFileCleanup
from taskforge.forge.families.git_tasks import ChangelogFromGit, GitBranchReport, GitMergeConflict, GitReleaseTag
from taskforge.forge.families.json_data import FormatConvert, JsonRollup
from taskforge.forge.families.logs import AccessLogReport, LogLevelWindow, RegexExtract
from taskforge.forge.families.pyfix import PythonBugfix
from taskforge.forge.families.services import GitPushDeploy, SpoolWorker, TickScheduler, WebServiceRepair
from taskforge.forge.families.sqlite_report import SqliteReport
from taskforge.forge.families.tabular import CsvCleanup, CsvGroupBy, CsvJoin, DedupeRecords
from taskforge.forge.families.users import UserAccounts

FAMILY_CLASSES: list[type[Family]] = [
    # data_processing
    CsvGroupBy,
    CsvJoin,
    DedupeRecords,
    CsvCleanup,
    JsonRollup,
    FormatConvert,
    AccessLogReport,
    LogLevelWindow,
    RegexExtract,
    # system_operations
    PermissionsFix,
    PermissionAudit,
    DiskUsageReport,
    StaleFileCleanup,
    ArchiveBackup,
    ArchiveRestore,
    CronSchedule,
    SystemdUnit,
    EnvMerge,
    LogrotateConfig,
    UserAccounts,
    CronJobNeverRuns,
    ConfigRejected,
    WebServiceRepair,
    SpoolWorker,
    TickScheduler,
    # development_tooling
    GitBranchReport,
    GitMergeConflict,
    GitReleaseTag,
    ChangelogFromGit,
    MakefileBuild,
    PythonBugfix,
    SqliteReport,
    PackagingMetadata,
    ComposeConfigEdit,
    ReportToolFails,
    FailingTestData,
    GitPushDeploy,
    # composite (multi-stage, across domains; drawn schedule_weight times per round)
    RestoreAndReport,
    TidyAndVerify,
    RestoreAndShip,
]

FAMILIES: dict[str, Family] = {cls.name: cls() for cls in FAMILY_CLASSES}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None
