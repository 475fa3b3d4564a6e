"""Type stubs of the compiled journal-key kernel (keys.pyx); see _ref_keys."""

def journal_keys(template_parts: list[tuple[str, str, str]], contexts: list[str],
                 inputs: list[str], names: list[str]) -> tuple[list[str], list[str]]: ...

__all__: list[str]
