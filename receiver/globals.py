"""Where the Go runtime's global variables are: the one function every reader of them asks.

``address(binary, name)`` gives the file virtual address of a runtime global (``runtime.allgs``,
``runtime.allglen``, ...), or None when gotel cannot locate it. Today it reads ``.symtab``; binaries
stripped of it need another source (instructions of runtime functions that reference the global),
which belongs here, behind the same function, so that every reader gains it at once.

Add the process's load bias (``GoBinary.load_bias(pid)``) before reading a PIE's memory.
"""


def address(binary, name):
    """File virtual address of the global variable ``name`` in ``binary`` (a GoBinary), or None."""
    sym = binary.image.symbols([name], functions_only=False).get(name)
    return None if sym is None else sym[0]
