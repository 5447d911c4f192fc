# placeholder until the fast path lands
