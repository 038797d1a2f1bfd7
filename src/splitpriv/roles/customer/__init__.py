"""The customer's role: one :class:`Customer` for every task (its step, trainer and private inference), the
journal that makes a run resumable, the privatizer's warm start, and what every step shares."""

from splitpriv.roles.customer.customer import CTI_FILE, Customer
from splitpriv.roles.customer.steps import backward_resending

__all__ = ["CTI_FILE", "Customer", "backward_resending"]
