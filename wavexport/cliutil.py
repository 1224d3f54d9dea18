"""Small click helpers shared by the command modules."""
import click


def int_list(ctx, param, value):
    """A click callback: "80,100" -> [80, 100] (None stays None)."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 100 or 80,100") from None
