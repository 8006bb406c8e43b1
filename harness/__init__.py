"""hotadd: boot a guest with hot-pluggable vCPUs, hot-add them, and check what the
guest's processor-change notifications looked like against what Windows promises."""

__version__ = "0.1.0"
