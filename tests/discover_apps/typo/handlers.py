from earnevents import Event, event_handler


@event_handler("shop.order_piad")
def on_paid_typo(event: Event) -> None:
    pass
