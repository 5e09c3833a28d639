from discover_apps import IMPORTED
from earnevents import define_event

IMPORTED.append(__name__)

InvoiceSent = define_event("shop.invoice_sent", description="An invoice went out")
