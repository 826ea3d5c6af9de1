"""Run by tests/test_cli.py: `python -m MODULE ARGS...` for several
argument lists, each in a process of its own forked from this one after
the imports (of jax, absl and the library: most of a command's start-up),
so that the imports are paid once:

    python tests/helpers/cli_forks.py MODULE OUT_DIR JSON_LIST_OF_ARGUMENT_LISTS

Each child runs MODULE as `__main__` (as `python -m` does) with its own
arguments; its stdout, stderr and exit status go to OUT_DIR/<i>.out,
OUT_DIR/<i>.err and OUT_DIR/<i>.status. The parent imports only what
MODULE imports, never MODULE itself (its flags are defined once, in the
child), and starts no JAX backend (a child may).
"""

import json
import os
import runpy
import sys
import traceback

# Run as a script, its folder is first on the path: the repository goes
# before it, so that this working tree is imported, not an installed copy.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments import flags  # noqa: E402, F401  (the imports of every command)


def run_child(module: str, args: list[str]) -> int:
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:  # as the interpreter does with an uncaught exception
        traceback.print_exc()
        return 1


def main(module: str, out_dir: str, arg_lists: str):
    for i, args in enumerate(json.loads(arg_lists)):
        with (
            open(os.path.join(out_dir, f"{i}.out"), "w") as out,
            open(os.path.join(out_dir, f"{i}.err"), "w") as err,
        ):
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                code = run_child(module, args)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        with open(os.path.join(out_dir, f"{i}.status"), "w") as fh:
            fh.write(str(os.waitstatus_to_exitcode(status)))


if __name__ == "__main__":
    main(*sys.argv[1:])
