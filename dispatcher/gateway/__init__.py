"""Everything that speaks the gateway protocol; nothing here touches the database."""
