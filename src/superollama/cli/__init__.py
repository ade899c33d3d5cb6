"""The ``superollama`` command line: a client of the admin API through ``superollama.Client``.

To add a command: give the client a method for its route (``superollama.client``'s docstring says how),
then define the command in a module here (see ``main``'s docstring: ``@pass_ctx``, ``@api``,
``ctx.client.<group>.<method>(…)``, ``@json_option`` + ``print_json`` when it prints data) and import the
module in ``main.main``.
"""
